"""Huey with ``RedisHuey`` (blocking pops) in one consumer process with 8 worker threads.

Huey is at-most-once by design (a job is popped, then run): it has no acknowledgement
setting to turn on. It stores a task's return value only when it is not None."""

from __future__ import annotations

from huey import RedisHuey

from bench.peers._record import record, redis_url

DB = 5

huey = RedisHuey("bench", url=redis_url(DB))


@huey.task()
def noop(t: float = 0.0) -> None:
    record(t, DB)


WORKER = ["huey_consumer", "bench.peers.huey_tasks.huey", "-k", "thread", "-w", "8", "-q", "-n"]


def enqueue(t: float = 0.0) -> None:
    noop(t)
