"""Celery with the Redis broker and its documented reliable settings.

acks_late + reject_on_worker_lost (a job is acknowledged only once it ran; a killed child
puts it back) and prefetch multiplier 1 (no job reserved beyond the one running). No result
backend: Celery stores no per-job state by default. Worker: ``prefork -c 2``.
"""

from __future__ import annotations

from celery import Celery

from bench.peers._record import record, redis_url

DB = 1
QUEUE = "bench"

app = Celery("bench", broker=redis_url(DB))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(t: float = 0.0) -> None:
    record(t, DB)


WORKER = ["celery", "-A", "bench.peers.celery_tasks", "worker", "-P", "prefork", "-c", "2", "-Q", QUEUE,
          "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def enqueue(t: float = 0.0) -> None:
    noop.delay(t)
