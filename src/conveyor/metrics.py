"""Prometheus metrics: job counters and timings per task and queue, queue depth at scrape.

Workers call ``job_started`` and ``job_finished``; the API server calls ``job_enqueued``.
When ``PROMETHEUS_MULTIPROC_DIR`` is set (``conveyor up`` sets it for its children) every
process writes its samples there and the server's ``/metrics`` aggregates them all; without
it, ``/metrics`` shows the serving process's own registry. A worker elsewhere serves its own
(``serve``), with its ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from conveyor.backends.base import QueueInfo
from conveyor.core.job import Job, Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LABELS = ("task", "queue")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))

ENQUEUED = Counter("conveyor_jobs_enqueued", "Jobs accepted for enqueueing.", _LABELS)
STARTED = Counter("conveyor_jobs_started", "Job attempts started by workers.", _LABELS)
SUCCEEDED = Counter("conveyor_jobs_succeeded", "Jobs that succeeded.", _LABELS)
FAILED = Counter("conveyor_jobs_failed", "Jobs that failed for good (dead letters).", _LABELS)
RETRIED = Counter("conveyor_jobs_retried", "Failed attempts that will be retried.", _LABELS)
DURATION = Histogram("conveyor_job_duration_seconds", "Run time of one attempt.", _LABELS, buckets=_BUCKETS)
WAIT = Histogram("conveyor_job_wait_seconds", "Time from ready to started.", _LABELS, buckets=_BUCKETS)

_OUTCOMES = {Status.SUCCEEDED: SUCCEEDED, Status.FAILED: FAILED, Status.RETRYING: RETRIED}


@functools.lru_cache(maxsize=4096)
def _child(metric: Counter | Histogram, task: str, queue: str) -> Any:
    """``metric.labels(task, queue)``, looked up once per pair (it costs microseconds per job)."""
    return metric.labels(task, queue)


def job_enqueued(job: Job) -> None:
    """Count one accepted job."""
    _child(ENQUEUED, job.task, job.queue).inc()


def job_started(job: Job, now: float) -> None:
    """Count one started attempt and how long it waited since it became ready."""
    _child(STARTED, job.task, job.queue).inc()
    ready_at = job.scheduled_at if job.scheduled_at is not None else job.created_at
    _child(WAIT, job.task, job.queue).observe(max(0.0, now - ready_at))


def job_finished(job: Job, status: Status | str, duration: float) -> None:
    """Count an attempt's outcome (``succeeded``, ``failed``, ``retrying``) and its run time."""
    counter = _OUTCOMES.get(Status(status))
    if counter is not None:
        _child(counter, job.task, job.queue).inc()
    _child(DURATION, job.task, job.queue).observe(max(0.0, duration))


class QueueDepth(Collector):
    """Gauges of each queue's jobs per status, from one ``backend.queues()`` at scrape time."""

    def __init__(self, queues: Sequence[QueueInfo]) -> None:
        self.queues = queues

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("conveyor_queue_jobs", "Jobs in a queue per status.", labels=["queue", "status"])
        paused = GaugeMetricFamily("conveyor_queue_paused", "1 when the queue is paused.", labels=["queue"])
        for info in self.queues:
            for status in ("waiting", "scheduled", "queued", "running", "retrying", "failed"):
                depth.add_metric([info.name, status], float(info.counts.get(status, 0)))
            paused.add_metric([info.name], 1.0 if info.settings.paused else 0.0)
        yield depth
        yield paused


def render(queues: Sequence[QueueInfo]) -> bytes:
    """The Prometheus text of every process's counters plus the queue gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    gauges = CollectorRegistry(auto_describe=False)
    gauges.register(QueueDepth(queues))
    return text + generate_latest(gauges)


def serve(host: str, port: int, not_ready: Callable[[], str | None] | None = None) -> None:
    """Serve this process's metrics at ``http://host:port/metrics`` from a daemon thread: its job
    counters and timings, and the process's own (resident memory, CPU time, open files), for a
    worker on a host of its own (``conveyor worker --metrics``). Beside them ``/healthz`` (200
    while the process answers) and ``/readyz`` (200, or 503 with the reason ``not_ready`` gives).
    ``OSError`` if it cannot listen."""

    class Server(_Server):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    httpd = make_server(host, port, _router(make_wsgi_app(REGISTRY), not_ready), Server, _QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="conveyor-metrics", daemon=True).start()


#: A WSGI application: ``(environ, start_response) -> body``.
_App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _router(metrics_app: _App, not_ready: Callable[[], str | None] | None) -> _App:
    """``/healthz`` and ``/readyz`` here; every other path to prometheus_client's app, as before."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            problem = not_ready() if not_ready is not None else None
            if problem is None:
                return _json(start_response, "200 OK", {"status": "ready"})
            body = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": problem}
            return _json(start_response, "503 Service Unavailable", body, "application/problem+json",
                         [("Retry-After", "5")])
        return metrics_app(environ, start_response)

    return app


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any],
          media_type: str = "application/json", extra: Sequence[tuple[str, str]] = ()) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", media_type), ("Content-Length", str(len(data))), *extra])
    return [data]


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A request per thread (a slow scrape holds up no probe); the threads die with the process."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per request (a probe every few seconds would flood the worker's log)."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


__all__ = ["job_enqueued", "job_finished", "job_started", "render", "serve"]
