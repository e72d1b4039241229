"""Conveyor's own benchmark: enqueue throughput, drain throughput, idle latency.

    .venv/bin/python -m bench.bench [--url sqlite:///bench.db] [--runs 3] [--jobs 10000]

RabbitMQ: ``--url amqp://guest:guest@127.0.0.1:5672/``; the job store is a fresh SQLite file
per run, or ``BENCH_STORE_URL`` (a redis:// or postgresql:// base URL).

Each figure is the median of ``--runs`` runs on a fresh store. Enqueue: one job per call from
one thread; one job per call from 8 threads at once (a threaded web app's sync ``enqueue``); one
job per call from 64 coroutines at once (as an API server's requests arrive);
and batches of ``--jobs``. The engine's round trips per second (``ping``, one at a time) are
printed beside them: no one-job-per-call loop can beat that floor. Drain: ``--jobs`` no-op jobs
are enqueued first, then one ``conveyor worker`` process drains them; throughput is jobs
divided by (last finished_at − first started_at) read from the job records, so process
start-up is not counted. Idle latency: with the worker idle, one job at a time is
enqueued; latency is its started_at − created_at (when it was leased) and, from the task
itself, when it really began − created_at.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from bench import CHILD_PYTHONPATH, wake_floor
from conveyor import Conveyor
from conveyor.backends.base import JobQuery
from conveyor.core.job import Status


def fresh_url(base: str, run: int) -> str:
    if base.startswith("sqlite"):
        return f"sqlite:///{tempfile.mkdtemp(prefix='conveyor-bench-')}/bench.db"
    if base.startswith("amqp"):  # RabbitMQ: a fresh job store for every run too (inherited by workers)
        os.environ["CONVEYOR_STORE_URL"] = fresh_url(os.environ.get("BENCH_STORE_URL", "sqlite://"), run)
    sep = "&" if "?" in base else "?"
    key = "schema" if base.startswith("postgres") else "prefix"
    return f"{base}{sep}{key}=bench{os.getpid()}_{run}"


def client(url: str) -> Conveyor:
    os.environ["CONVEYOR_URL"] = url
    from bench import tasks

    app = Conveyor(url)
    app.tasks = dict(tasks.app.tasks)
    return app


def start_worker(url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CONVEYOR_URL=url, PYTHONPATH=CHILD_PYTHONPATH)
    return subprocess.Popen([sys.executable, "-m", "conveyor.cli", "worker", "--app", "bench.tasks:app",
                             "--no-scheduler", *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


async def all_jobs(app: Conveyor) -> list[Any]:
    backend = await app.backend()
    items, cursor = [], None
    while True:
        page = await backend.list_jobs(JobQuery(limit=500, cursor=cursor))
        items += page.items
        cursor = page.next_cursor
        if not cursor:
            return items


async def _drop(app: Conveyor) -> None:
    backend = await app.backend()
    if hasattr(backend, "drop"):
        await backend.drop()


def drop(app: Conveyor) -> None:
    """Delete this run's data and close every connection the app opened, those of the threads'
    own loops too (a pool left open on a loop nobody runs dies noisily at exit)."""
    app.portal.call(_drop(app))
    app.close()


async def ping_rate(app: Conveyor, n: int) -> float:
    """Round trips to the engine per second, one at a time: the floor under one call per job."""
    backend = await app.backend()
    t0 = time.perf_counter()
    for _ in range(n):
        await backend.ping()
    return n / (time.perf_counter() - t0)


async def concurrent_singles(app: Conveyor, n: int, callers: int) -> float:
    """``callers`` coroutines each enqueue one job per call (as an API server's requests do)."""
    task = app.tasks["noop"]

    async def caller(count: int) -> None:
        for _ in range(count):
            await app.enqueue_async(task)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(n // callers) for _ in range(callers)))
    return (n // callers) * callers / (time.perf_counter() - t0)


def threaded_singles(app: Conveyor, n: int, threads: int) -> float:
    """``threads`` threads each call the sync ``enqueue`` once per job (a threaded web app)."""
    task = app.tasks["noop"]
    start = threading.Barrier(threads + 1)

    def caller(count: int) -> None:
        start.wait()
        for _ in range(count):
            app.enqueue(task)

    pool = [threading.Thread(target=caller, args=(n // threads,)) for _ in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    t0 = time.perf_counter()
    for thread in pool:
        thread.join()
    return (n // threads) * threads / (time.perf_counter() - t0)


def bench_enqueue(url: str, n: int) -> tuple[float, float, float, float, float]:
    app = client(url)
    task = app.tasks["noop"]
    app.enqueue(task)  # open the connection first
    ping = app.portal.call(ping_rate(app, 2000))
    t0 = time.perf_counter()
    for _ in range(n // 2):  # 5,000 calls by default: a slow tenth of a second skews fewer
        app.enqueue(task)
    single = (n // 2) / (time.perf_counter() - t0)
    threaded = threaded_singles(app, n // 2, 8)
    concurrent = app.portal.call(concurrent_singles(app, n, 64))
    t0 = time.perf_counter()
    for _ in range(5):
        app.enqueue_many([(task, (), {}, {}) for _ in range(n)])
    batch = 5 * n / (time.perf_counter() - t0)
    drop(app)
    return ping, single, threaded, concurrent, batch


def bench_drain(url: str, n: int, worker_args: list[str], processes: int = 1, task_name: str = "noop") -> float:
    app = client(url)
    task = app.tasks[task_name]
    for i in range(0, n, 5000):
        app.enqueue_many([(task, (), {}, {}) for _ in range(min(5000, n - i))])
    workers = [start_worker(url, *worker_args) for _ in range(processes)]
    try:
        deadline = time.monotonic() + 300
        backend_jobs: list[Any] = []
        while time.monotonic() < deadline:
            time.sleep(0.5)
            counts = app.portal.call(queue_counts(app))
            if counts.get("succeeded", 0) >= n:
                break
        backend_jobs = app.portal.call(all_jobs(app))
    finally:
        for worker in workers:
            stop(worker)
    done = [j for j in backend_jobs if j.status is Status.SUCCEEDED]
    assert len(done) == n, f"only {len(done)} of {n} jobs succeeded"
    span = max(j.finished_at or 0.0 for j in done) - min(j.started_at or math.inf for j in done)
    drop(app)
    return n / span


async def queue_counts(app: Conveyor) -> dict[str, int]:
    backend = await app.backend()
    infos = await backend.queues(["default"])
    return dict(infos[0].counts) if infos else {}


def bench_latency(url: str, samples: int) -> tuple[float, float, float, float]:
    """Idle start latency p50/p99 in ms: from the job records (``started_at − created_at``, the
    lease) and from the task itself (when it really began − ``created_at``)."""
    app = client(url)
    task = app.tasks["stamp"]
    worker = start_worker(url)
    leased, ran = [], []
    try:
        app.enqueue(task).wait(timeout=30)  # the worker is up
        for _ in range(samples):
            time.sleep(0.02)  # let the worker go idle
            job = app.enqueue(task)
            job.wait(timeout=10)
            assert job.job.started_at is not None, "a succeeded job has started"
            leased.append((job.job.started_at - job.job.created_at) * 1000)
            ran.append((job.job.result - job.job.created_at) * 1000)
    finally:
        stop(worker)
    drop(app)
    return (*_p50_p99(leased), *_p50_p99(ran))


def _p50_p99(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[int(len(values) * 0.99) - 1]


def _ms(p50: float, p99: float) -> str:
    return "—" if math.isnan(p50) else f"{p50:.2f} / {p99:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="sqlite:///bench.db")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--worker-args", default="", help="extra options for `conveyor worker`")
    parser.add_argument("--processes", type=int, default=1, help="worker processes for the drain")
    parser.add_argument("--task", default="noop", choices=("noop", "anoop"), help="drain a sync or an async no-op")
    args = parser.parse_args()
    worker_args = args.worker_args.split()
    keys = ("ping", "single", "threaded", "concurrent", "batch", "drain", "p50", "p99", "ran50", "ran99",
            "floor50", "floor99")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    for run in range(args.runs):
        ping, single, threaded, concurrent, batch = bench_enqueue(fresh_url(args.url, run), args.jobs)
        drain = bench_drain(fresh_url(args.url, run + 100), args.jobs, worker_args, args.processes, args.task)
        p50, p99, ran50, ran99 = bench_latency(fresh_url(args.url, run + 200), args.samples)
        # on Redis, the floor under any queue's idle latency: a bare LPUSH -> BLPOP hand-off
        floor = wake_floor.measure(args.url.split("?")[0], args.samples) if args.url.startswith("redis://") \
            else (float("nan"), float("nan"))
        values = (ping, single, threaded, concurrent, batch, drain, p50, p99, ran50, ran99, *floor)
        for key, value in zip(keys, values, strict=True):
            rows[key].append(value)
        print(f"run {run + 1}: round trips {ping:,.0f}/s, enqueue single {single:,.0f}/s, "
              f"single × 8 threads {threaded:,.0f}/s, single × 64 callers {concurrent:,.0f}/s, "
              f"batch {batch:,.0f}/s, drain {drain:,.0f} jobs/s, "
              f"idle start: leased {p50:.2f} / {p99:.2f} ms, task ran {ran50:.2f} / {ran99:.2f} ms "
              f"(bare hand-off {_ms(*floor)})", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    worker = (" ".join(worker_args) or "defaults") + f", task {args.task}"
    print(f"\nmedian of {args.runs} on {args.url.split(':')[0]} ({args.jobs:,} jobs, worker {worker}):")
    print(f"| engine round trips (ping) | enqueue single | enqueue single, 8 threads "
          f"| enqueue single, 64 concurrent callers | enqueue batch "
          f"| drain ({args.processes} worker process(es)) | idle start, leased p50 / p99 "
          f"| idle start, task ran p50 / p99 | bare hand-off p50 / p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {med['ping']:,.0f}/s | {med['single']:,.0f} jobs/s | {med['threaded']:,.0f} jobs/s "
          f"| {med['concurrent']:,.0f} jobs/s "
          f"| {med['batch']:,.0f} jobs/s | {med['drain']:,.0f} jobs/s | {_ms(med['p50'], med['p99'])} "
          f"| {_ms(med['ran50'], med['ran99'])} | {_ms(med['floor50'], med['floor99'])} |")


if __name__ == "__main__":
    main()
