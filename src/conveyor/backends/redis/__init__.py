"""The Redis engine (``redis://host:6379/0?prefix=conveyor``).

``backend.py`` is the engine, ``RedisBackend`` (its docstring holds the key layout), and
``lua/`` its scripts. Beside them: ``url.py`` reads the URL; ``records.py`` turns what is stored
into Python values and back; ``scripts.py`` builds the scripts' sources and the claim and finish
arguments; ``submissions.py`` sends concurrent enqueues together; ``kept.py`` keeps a connection
for a sync caller that comes one at a time; ``packing.py`` packs commands with hiredis.
"""

from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
