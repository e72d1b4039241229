"""RQ with ``SimpleWorker`` (runs jobs in the worker process: RQ's default worker forks
once per job, which caps it far lower). RQ keeps a job hash per job (status, enqueued/started/ended
times, result for ``result_ttl`` = 500 s by default)."""

from __future__ import annotations

from bench.peers._record import record, redis_url

DB = 3
QUEUE = "bench"


def noop(t: float = 0.0) -> None:
    record(t, DB)


WORKER = ["rq", "worker", "-w", "rq.worker.SimpleWorker", "-u", redis_url(DB), "-q", QUEUE]

_queue = None


def enqueue(t: float = 0.0) -> None:
    global _queue
    if _queue is None:
        from redis import Redis
        from rq import Queue

        _queue = Queue(QUEUE, connection=Redis.from_url(redis_url(DB)))
    _queue.enqueue(noop, t)
