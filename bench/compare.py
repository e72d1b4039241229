"""Conveyor side by side with its peers, on the same local Redis, in one run.

    python3.11 -m venv .bench-venv
    .bench-venv/bin/pip install -e '.[redis]' 'celery[redis]' 'dramatiq[redis]' rq huey taskiq taskiq-redis
    .bench-venv/bin/pip install --no-deps arq   # arq pins redis<6, kombu[redis] needs >=6.4
    .bench-venv/bin/python -m bench.compare [--runs 3] [--jobs 10000] [--samples 200] [--only a,b]

Every framework runs the same no-op (``bench/peers/_record.py``), so every one is measured the
same way, from outside, by the same clock:

- enqueue single: ``--jobs`` jobs enqueued one call at a time from this process, worker down;
- drain: then ONE worker process (each framework's own CLI, its concurrency as in the table)
  is started and drains them. A drain job only counts itself in the worker's memory (no Redis
  call of its own); a thread publishes the count and the first and last completion times every
  10 ms. jobs/s = (jobs − 1) / (last − first completion), so process start-up is not counted;
- idle start latency: the same worker, idle, gets one job at a time whose argument is its
  enqueue time; the task RPUSHes the delay. ``--samples`` samples, 20–40 ms apart (arq, which
  polls every 0.5 s, 20–520 ms apart so that samples meet its poll at a random phase).

Each figure is the median over ``--runs`` runs. Peers use Redis dbs 1–6 (FLUSHDB of that db
before and after); Conveyor uses db 0 under a prefix of its own, deleted afterwards. Every
wait is bounded and every worker is started in its own process group and killed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from bench import CHILD_PYTHONPATH, ROOT

BIN = Path(sys.executable).parent
REDIS = "redis://127.0.0.1:6379"
DONE = "bench:done"
LOG_DIR = Path(tempfile.gettempdir()) / "conveyor-bench-peers"  #: the workers' output

_workers: list[subprocess.Popen[bytes]] = []


# -- processes ----------------------------------------------------------------------------
def start_worker(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    full_env = dict(os.environ, PYTHONPATH=CHILD_PYTHONPATH, **env)
    LOG_DIR.mkdir(exist_ok=True)
    log = open(LOG_DIR / f"worker-{Path(cmd[0]).name}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([exe, *cmd[1:]], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    _workers.append(proc)
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group, SIGKILL it after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent too
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc in _workers:
        _workers.remove(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_workers):
        stop_worker(proc)


# -- frameworks ---------------------------------------------------------------------------
@dataclass
class Framework:
    """One row: how to enqueue, which worker to start, where its keys live."""

    name: str
    dist: str
    worker: str  #: how the worker runs, for the table
    state: str  #: records full job state?
    db: int
    prepare: Callable[[int], None]  #: fresh store for run n
    enqueue: Callable[[float], None]  #: one job, argument t
    worker_cmd: Callable[[], list[str]]
    worker_env: Callable[[], dict[str, str]] = dict
    cleanup: Callable[[], None] = lambda: None
    done_key: Callable[[], str] = lambda: DONE
    enqueue_many: Callable[[int], float] | None = None  #: n jobs, returns elapsed seconds
    #: seconds between polls of an idle worker (0: it blocks); latency samples are spread over it
    poll_interval: float = 0.0
    coroutine: bool = False  #: the no-op is an ``async def`` (else a plain function)
    results: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("enq", "drain", "p50", "p99")})
    error: str | None = None

    @property
    def version(self) -> str:
        return metadata.version(self.dist)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(f"{REDIS}/{self.db}")


def flush_db(db: int) -> None:
    assert 1 <= db <= 6, "peers only use dbs 1-6"
    redis.Redis.from_url(f"{REDIS}/{db}").flushdb()


def peer(name: str, dist: str, module: str, worker: str, state: str) -> Framework:
    mod = __import__(f"bench.peers.{module}", fromlist=["WORKER"])
    return Framework(name, dist, worker, state, mod.DB, prepare=lambda run: flush_db(mod.DB), enqueue=mod.enqueue,
                     worker_cmd=lambda: list(mod.WORKER), cleanup=lambda: flush_db(mod.DB))


def arq_framework() -> Framework:
    from bench.peers import arq_tasks

    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(arq_tasks.open_pool())

    async def many(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await arq_tasks.enqueue(pool)
        return time.perf_counter() - t0

    fw = peer("arq", "arq", "arq_tasks", "asyncio, max_jobs 10 (default)",
              "partly: result record with enqueue/start/finish times, kept 1 h")
    fw.enqueue = lambda t: loop.run_until_complete(arq_tasks.enqueue(pool, t))
    fw.enqueue_many = lambda n: loop.run_until_complete(many(n))
    fw.poll_interval = arq_tasks.WorkerSettings.poll_delay
    fw.coroutine = True
    return fw


_taskiq_loop: list[asyncio.AbstractEventLoop] = []  #: one loop for both rows: they share the module's broker


def taskiq_framework(sync: bool = False) -> Framework:
    from bench.peers import taskiq_tasks

    if not _taskiq_loop:
        _taskiq_loop.append(asyncio.new_event_loop())
    loop = _taskiq_loop[0]
    send = taskiq_tasks.enqueue_sync if sync else taskiq_tasks.enqueue

    async def many(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await send()
        return time.perf_counter() - t0

    def prepare(run: int) -> None:
        flush_db(taskiq_tasks.DB)
        loop.run_until_complete(taskiq_tasks.open_broker())  # declares the consumer group

    if sync:
        fw = peer("Taskiq (sync task)", "taskiq", "taskiq_tasks",
                  "RedisStreamBroker, plain-function no-op in its thread pool (8 threads), ack when executed",
                  "no (no result backend by default)")
        fw.worker_cmd = lambda: list(taskiq_tasks.WORKER_SYNC)
    else:
        fw = peer("Taskiq", "taskiq", "taskiq_tasks", "RedisStreamBroker, asyncio (100 tasks), ack when executed",
                  "no (no result backend by default)")
        fw.coroutine = True
    fw.prepare = prepare
    fw.enqueue = lambda t: loop.run_until_complete(send(t))
    fw.enqueue_many = lambda n: loop.run_until_complete(many(n))
    return fw


def conveyor_framework(label: str, task_name: str, worker_args: list[str], worker: str,
                       coroutine: bool = False) -> Framework:
    from bench.peers import conveyor_tasks
    from conveyor import Conveyor

    state: dict[str, Any] = {}

    def prepare(run: int) -> None:
        prefix = f"benchpeers{os.getpid()}_{task_name}_{run}"
        url = f"{REDIS}/0?prefix={prefix}"
        app = Conveyor(url)
        app.tasks = dict(conveyor_tasks.app.tasks)
        state.update(prefix=prefix, url=url, app=app, task=app.tasks[task_name])

    def cleanup() -> None:
        app = state.get("app")
        if app is None:
            return
        from bench.bench import drop

        drop(app)
        redis.Redis.from_url(f"{REDIS}/0").delete(f"bench:{state['prefix']}:done",
                                                  f"bench:{state['prefix']}:done:drain")

    return Framework(
        label, "conveyor", worker, "yes: status, attempts, timestamps, result per job", 0,
        prepare=prepare,
        enqueue=lambda t: state["app"].enqueue(state["task"], (t,)),
        worker_cmd=lambda: [sys.executable, "-m", "conveyor.cli", "worker", "--app",
                            "bench.peers.conveyor_tasks:app", "--no-scheduler", *worker_args],
        worker_env=lambda: {"CONVEYOR_URL": state["url"], "BENCH_REDIS_URL": f"{REDIS}/0",
                            "BENCH_DONE_KEY": f"bench:{state['prefix']}:done"},
        cleanup=cleanup,
        done_key=lambda: f"bench:{state['prefix']}:done",
        coroutine=coroutine,
    )


def frameworks(only: set[str] | None) -> list[Framework]:
    makers: dict[str, Callable[[], Framework]] = {
        "conveyor": lambda: conveyor_framework("Conveyor (defaults)", "noop", [], "thread pool, concurrency 8"),
        "conveyor-async": lambda: conveyor_framework(
            "Conveyor (async)", "anoop", ["--pool", "async", "--concurrency", "64"],
            "`--pool async --concurrency 64`, async no-op", coroutine=True),
        "celery": lambda: peer("Celery", "celery", "celery_tasks", "prefork -c 2, acks_late, reject_on_worker_lost, "
                               "prefetch ×1", "no (no result backend by default)"),
        "dramatiq": lambda: peer("Dramatiq", "dramatiq", "dramatiq_tasks", "1 process × 8 threads",
                                 "no (Results middleware: return values only)"),
        "rq": lambda: peer("RQ", "rq", "rq_tasks", "SimpleWorker",
                           "yes: job hash with status and times (expires: result_ttl 500 s)"),
        "arq": arq_framework,
        "huey": lambda: peer("Huey", "huey", "huey_tasks", "RedisHuey, 1 process × 8 threads",
                             "no (return values only, when not None)"),
        "taskiq": taskiq_framework,
        "taskiq-sync": lambda: taskiq_framework(sync=True),
    }
    chosen = [k for k in makers if only is None or k in only]
    out = []
    for key in chosen:
        try:
            out.append(makers[key]())
        except Exception as exc:  # a peer that cannot even be imported is reported, not fatal
            print(f"{key}: cannot set up: {exc!r}", file=sys.stderr)
    return out


# -- measurements -------------------------------------------------------------------------
def drained(r: redis.Redis, key: str) -> tuple[int, float, float]:
    """Completions so far over the worker's processes: (count, first, last)."""
    counts = [value.split() for value in r.hgetall(f"{key}:drain").values()]
    if not counts:
        return 0, 0.0, 0.0
    return (sum(int(c) for c, _, _ in counts), min(float(f) for _, f, _ in counts),
            max(float(last) for _, _, last in counts))


def wait_for(r: redis.Redis, key: str, n: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait until ``n`` drain jobs completed; jobs/s between the first and last completion."""
    deadline = time.monotonic() + timeout
    while (done := drained(r, key))[0] < n:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} after {done[0]} of {n} jobs")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done[0]} of {n} jobs done within {timeout:.0f} s")
        time.sleep(0.1)
    count, first, last = done
    return (count - 1) / (last - first)


def one_run(fw: Framework, run: int, jobs: int, samples: int, drain_timeout: float) -> tuple[float, ...]:
    fw.prepare(run)
    r = fw.client()
    key = fw.done_key()
    r.delete(key, f"{key}:drain")
    # enqueue single: worker down, one call per job
    if fw.enqueue_many is not None:
        elapsed = fw.enqueue_many(jobs)
    else:
        t0 = time.perf_counter()
        for _ in range(jobs):
            fw.enqueue(0.0)
        elapsed = time.perf_counter() - t0
    enq = jobs / elapsed
    proc = start_worker(fw.worker_cmd(), fw.worker_env())
    try:
        # drain
        drain = wait_for(r, key, jobs, proc, drain_timeout)
        # idle start latency (one warm-up sample first)
        latencies = []
        for i in range(samples + 1):
            # let the worker go idle; a random gap, so a polling worker is met at a random phase
            time.sleep(0.02 + random.uniform(0.0, max(0.02, fw.poll_interval)))
            fw.enqueue(time.time())
            got = r.blpop([key], timeout=10)
            if got is None:
                raise RuntimeError(f"latency sample {i} not done within 10 s")
            if i:
                latencies.append(float(got[1]) * 1000)
    finally:
        stop_worker(proc)
        r.delete(key, f"{key}:drain")
        fw.cleanup()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    return enq, drain, p50, p99


def table(fws: list[Framework], runs: int) -> str:
    lines = [
        "| framework | version | worker (1 process) | drain jobs/s | idle start latency p50 / p99 (ms) "
        "| enqueue jobs/s single | records full job state |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for fw in fws:
        if fw.error or len(fw.results["drain"]) < runs:
            lines.append(f"| {fw.name} | {fw.version} | {fw.worker} | failed: {fw.error} | | | {fw.state} |")
            continue
        med = {k: statistics.median(v) for k, v in fw.results.items()}
        lines.append(f"| {fw.name} | {fw.version} | {fw.worker} | {med['drain']:,.0f} | "
                     f"{med['p50']:.2f} / {med['p99']:.2f} | {med['enq']:,.0f} | {fw.state} |")
    return "\n".join(lines)


def ratios(fws: list[Framework], runs: int) -> str:
    """Each Conveyor row against the fastest peer that runs the same kind of no-op."""
    done = [fw for fw in fws if not fw.error and len(fw.results["drain"]) >= runs]
    drain = {fw.name: statistics.median(fw.results["drain"]) for fw in done}
    lines = []
    for ours in (fw for fw in done if fw.dist == "conveyor"):
        kind = "coroutine" if ours.coroutine else "plain function"
        peers = [fw for fw in done if fw.dist != "conveyor" and fw.coroutine == ours.coroutine]
        if peers:
            best = max(peers, key=lambda fw: drain[fw.name])
            lines.append(f"- {ours.name} drains {drain[ours.name] / drain[best.name]:.2f}× the fastest peer whose "
                         f"no-op is a {kind}, {best.name} ({drain[best.name]:,.0f} jobs/s)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--drain-timeout", type=float, default=240.0, help="seconds per drain at most")
    parser.add_argument("--only", help="comma-separated: conveyor,conveyor-async,celery,dramatiq,rq,arq,huey,"
                                       "taskiq,taskiq-sync")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fws = frameworks(only)
    started = time.monotonic()
    # runs interleave the frameworks, so a slow minute of the machine hits all of them alike
    for run in range(args.runs):
        for fw in fws:
            if fw.error:
                continue
            t0 = time.monotonic()
            try:
                values = one_run(fw, run, args.jobs, args.samples, args.drain_timeout)
            except Exception as exc:
                fw.error = str(exc) or repr(exc)
                print(f"run {run + 1} {fw.name}: FAILED: {fw.error}", flush=True)
                continue
            for k, v in zip(fw.results, values, strict=True):
                fw.results[k].append(v)
            enq, drain, p50, p99 = values
            print(f"run {run + 1} {fw.name}: enqueue {enq:,.0f}/s, drain {drain:,.0f} jobs/s, "
                  f"latency p50 {p50:.2f} ms p99 {p99:.2f} ms ({time.monotonic() - t0:.0f} s)", flush=True)
    print(f"\nmedians of {args.runs} runs, {args.jobs:,} jobs per drain, {args.samples} latency samples, "
          f"{time.monotonic() - started:.0f} s in all:\n")
    print(table(fws, args.runs))
    print(ratios(fws, args.runs))


if __name__ == "__main__":
    main()
