"""Dramatiq with its Redis broker: 1 worker process × 8 threads.

The Redis broker acknowledges a message only after its actor returned (at-least-once) and
re-queues the messages of a dead worker after its heartbeat times out: that is already the
documented reliable setup. Default middleware; no Results middleware (no per-job state).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers._record import record, redis_url

DB = 2
QUEUE = "bench"

broker = RedisBroker(url=redis_url(DB))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=3)
def noop(t: float = 0.0) -> None:
    record(t, DB)


WORKER = ["dramatiq", "bench.peers.dramatiq_tasks", "--processes", "1", "--threads", "8", "--queues", QUEUE]


def enqueue(t: float = 0.0) -> None:
    noop.send(t)
