"""One small module per framework for ``bench/compare.py``: its no-op task and its settings.

Every no-op does the same single thing, so every framework is measured the same way: one
``RPUSH <done key> <time.time() - t>`` on a pooled connection of its process (``t`` is 0 in a
drain, so the list holds completion times; in a latency sample ``t`` is the enqueue time, so
the list holds the delay). The done list lives in the framework's own Redis db (peers: 1–5).
"""
