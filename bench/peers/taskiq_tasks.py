"""Taskiq with taskiq-redis' ``RedisStreamBroker``, its broker with acknowledgements.

Reliable settings: ``--ack-type when_executed`` (a message is acknowledged only after its task
ran) and an ``idle_timeout`` of 30 s after which another worker claims a dead worker's
unacknowledged messages (the default is 10 minutes). One worker process (``--workers 1``; the
default is 2), asyncio with Taskiq's default of 100 concurrent tasks. No result backend:
Taskiq records no per-job state by default.

``snoop`` is the same no-op as a plain function, which Taskiq runs in its thread pool (8
threads here, as Conveyor's, Dramatiq's and Huey's defaults): the like-for-like peer of a
thread-pool worker. ``WORKER_SYNC`` starts the same worker with that pool size."""

from __future__ import annotations

from typing import Any

from taskiq_redis import RedisStreamBroker

from bench.peers._record import arecord, record, redis_url

DB = 6
QUEUE = "bench"

broker = RedisStreamBroker(redis_url(DB), queue_name=QUEUE, idle_timeout=30_000)


@broker.task(task_name="noop")
async def noop(t: float = 0.0) -> None:
    await arecord(t, DB)


@broker.task(task_name="snoop")
def snoop(t: float = 0.0) -> None:
    record(t, DB)


WORKER = ["taskiq", "worker", "bench.peers.taskiq_tasks:broker", "--workers", "1", "--ack-type", "when_executed",
          "--log-level", "WARNING"]
WORKER_SYNC = [*WORKER, "--max-threadpool-threads", "8"]


async def open_broker() -> Any:
    await broker.startup()
    return broker


async def enqueue(t: float = 0.0) -> None:
    await noop.kiq(t)


async def enqueue_sync(t: float = 0.0) -> None:
    await snoop.kiq(t)
