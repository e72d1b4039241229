"""Chaos soak: kill -9 workers at random while jobs run, then check that nothing was lost.

    .venv/bin/python -m bench.chaos --url URL [--jobs 2000] [--workers 3] [--seconds 120]
        [--concurrency 4] [--pool thread] [--visibility 3] [--sigterm 0.2] [--sigstop 0]
        [--seed 1] [--drain-timeout 120] [--keep]

``URL`` is an engine's base URL without a namespace: the soak runs in a fresh one of its own
(a SQLite file in a new temporary directory, a Redis ``prefix``, a PostgreSQL ``schema``) and
drops it at the end unless ``--keep``. RabbitMQ (``amqp://guest:guest@127.0.0.1:5672/``) gets
its own ``prefix`` and a job store from ``BENCH_STORE_URL`` (a redis:// or postgresql:// base
URL, namespaced likewise), else a fresh SQLite file, as in ``bench.bench``.

What it does:

1. Enqueues half of ``--jobs`` up front, from ``bench.chaos_tasks``: no-ops, jobs sleeping
   0.05–2 s (in a pool thread or on the event loop), jobs that fail once or twice and then
   succeed (``max_retries`` 2), jobs that always fail, jobs delayed 1–5 s, and chains of three
   dependent jobs (a few headed by a job that always fails: its dependents end ``cancelled``).
   The other half is enqueued during the chaos, in small batches.
2. Runs ``--workers`` ``conveyor worker`` processes (queue visibility timeout ``--visibility``
   seconds, so redelivery happens within the run). Every 0.5–3 s (random, seeded by
   ``--seed``) it signals a random worker, SIGKILL or, with probability ``--sigterm``, SIGTERM,
   and starts a replacement. A worker that exits on its own is reported and replaced. With
   ``--sigstop P``, a share P of the signals freezes a worker instead (SIGSTOP, then SIGCONT two
   visibility timeouts and a second later): its leases pass on, and fencing must refuse what it
   reports once it runs again.
3. After ``--seconds`` the chaos stops: every worker but one gets SIGTERM, and the soak waits
   (at most ``--drain-timeout`` s) until every accepted job is terminal, then 2 visibility
   timeouts more for a run of a job that was already terminal, then stops the last worker.

The report: jobs accepted, terminal counts by status (with the error types of ``failed``),
jobs whose status is not the one their task leads to, any job not terminal at the bound (its
record: status, deliveries, attempt, lease expiry), the time to drain, and executions: every
task run writes a line at its start and end (``$CHAOS_RUNS/<pid>.jsonl``), so a job that ran
again with the same attempt number is a re-run, explained when the process of the earlier run
was killed (or frozen) between that run's start and the re-run's start, and *unexplained*
otherwise; likewise a run that never ended in a process that was not killed, and a run of a job
after it was terminal. Worker exits that were not asked for, SIGTERMs that did not exit 0
within the grace, and ERROR lines of the worker logs are listed too.
The exit code is 1 when anything is lost, stuck or unexplained, else 0. Worker logs and run
files stay in the printed directory when it is 1 (or with ``--keep``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import CHILD_PYTHONPATH
from bench.bench import drop, fresh_url
from conveyor import Conveyor
from conveyor.core.job import Job, Status

APP = "bench.chaos_tasks:app"
GRACE = 5.0  #: the workers' --grace: longer than any chaos job, so a SIGTERM should re-run nothing
EXPECTED = {"quick": Status.SUCCEEDED, "nap": Status.SUCCEEDED, "anap": Status.SUCCEEDED,
            "flaky": Status.SUCCEEDED, "doomed": Status.FAILED, "step": Status.SUCCEEDED}


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    started: float
    n: int  #: its log is worker-<n>.log
    signalled: tuple[str, float] | None = None  #: ("KILL" | "TERM", time.time())


@dataclass
class Soak:
    """One soak's state, shared by the chaos loop and the enqueuing thread."""

    url: str
    folder: Path
    args: argparse.Namespace
    app: Conveyor
    rng: random.Random  #: the job mix's (the chaos has its own, so its signals do not depend on timing)
    ids: list[str] = field(default_factory=list)
    doomed_heads: set[str] = field(default_factory=set)  #: chain links expected `cancelled`
    enqueue_errors: list[str] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    stopping: list[Worker] = field(default_factory=list)
    deaths: dict[int, tuple[str, float]] = field(default_factory=dict)  #: pid -> signal, time sent
    freezes: dict[int, list[list[float]]] = field(default_factory=dict)  #: pid -> [SIGSTOP, SIGCONT] times
    thaws: list[threading.Timer] = field(default_factory=list)
    frozen_pids: set[int] = field(default_factory=set)  #: workers stopped now
    anomalies: list[str] = field(default_factory=list)  #: lost, stuck, unexplained: exit 1
    notes: list[str] = field(default_factory=list)  #: worth a look, not a broken promise
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: int = 0  #: workers started so far (names their log files)

    # -- workers ----------------------------------------------------------------------------
    def start_worker(self) -> Worker:
        n = self.started = self.started + 1
        env = dict(os.environ, CONVEYOR_URL=self.url, PYTHONPATH=CHILD_PYTHONPATH,
                   CHAOS_RUNS=str(self.folder / "runs"), CHAOS_VISIBILITY=str(self.args.visibility))
        with open(self.folder / f"worker-{n:03d}.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor.cli", "worker", "--app", APP, "--no-scheduler",
                 "--concurrency", str(self.args.concurrency), "--pool", self.args.pool, "--grace", str(GRACE)],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        worker = Worker(proc, time.time(), n)
        self.workers.append(worker)
        return worker

    def signal(self, worker: Worker, name: str) -> None:
        worker.signalled = (name, time.time())
        self.deaths[worker.proc.pid] = worker.signalled
        worker.proc.send_signal(signal.SIGKILL if name == "KILL" else signal.SIGTERM)
        self.workers.remove(worker)
        if name == "KILL":
            worker.proc.wait(10)
        else:
            self.stopping.append(worker)

    def freeze(self, worker: Worker) -> None:
        """SIGSTOP a worker for two visibility timeouts and a second: its leases pass on."""
        self.freezes.setdefault(worker.proc.pid, []).append([time.time(), math.inf])
        self.frozen_pids.add(worker.proc.pid)
        worker.proc.send_signal(signal.SIGSTOP)
        thaw = threading.Timer(2 * self.args.visibility + 1, self.thaw, (worker,))
        self.thaws.append(thaw)
        thaw.start()

    def thaw(self, worker: Worker) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(signal.SIGCONT)
        self.freezes[worker.proc.pid][-1][1] = time.time()
        self.frozen_pids.discard(worker.proc.pid)

    def frozen(self, run: dict[str, Any], until: float) -> bool:
        """Whether the worker of a run was frozen from a visibility timeout before the run's start
        (the lease it ran under may have passed on meanwhile) to ``until``."""
        spans = self.freezes.get(run["pid"], []) + self.freezes.get(run.get("ppid", 0), [])
        return any(stop <= until and cont >= run["t"] - self.args.visibility for stop, cont in spans)

    def signals_of(self, pid: int) -> str:
        """What was done to a worker, for a report."""
        done = [f"SIGSTOP {stop:.3f}–{cont:.3f}" for stop, cont in self.freezes.get(pid, [])]
        if pid in self.deaths:
            done.append(f"SIG{self.deaths[pid][0]} {self.deaths[pid][1]:.3f}")
        return ", ".join(done) or "not signalled"

    def death_of(self, run: dict[str, Any]) -> tuple[str, float] | None:
        """The signal sent to the worker of a run (its own process, or a pool child's parent)."""
        return self.deaths.get(run["pid"]) or self.deaths.get(run.get("ppid", 0))

    def reap(self) -> None:
        """Replace workers that exited unasked; note stopped ones that did not exit 0 in time."""
        for worker in list(self.workers):
            if worker.proc.poll() is not None:
                self.anomalies.append(f"worker {worker.proc.pid} exited {worker.proc.returncode} unasked "
                                      f"after {time.time() - worker.started:.1f} s")
                self.deaths[worker.proc.pid] = ("EXIT", time.time())
                self.workers.remove(worker)
                self.start_worker()
        for worker in list(self.stopping):
            assert worker.signalled is not None
            late = time.time() - worker.signalled[1] > GRACE + 15
            if worker.proc.poll() is None and not late:
                continue
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(10)
                self.anomalies.append(f"worker {worker.proc.pid} still running {GRACE + 15:.0f} s after SIGTERM")
            elif worker.proc.returncode == -signal.SIGTERM and worker.signalled[1] - worker.started < 1:
                self.notes.append(f"worker {worker.n} died of a SIGTERM {worker.signalled[1] - worker.started:.2f} s "
                                  "after its start (Python had not loaded conveyor's handler yet)")
            elif worker.proc.returncode != 0:
                self.anomalies.append(f"worker {worker.n} ({worker.proc.pid}) exited {worker.proc.returncode} after "
                                      f"a SIGTERM {worker.signalled[1] - worker.started:.2f} s after its start")
            self.stopping.remove(worker)

    # -- jobs -------------------------------------------------------------------------------
    def enqueue_some(self, n: int) -> None:
        """Enqueue ``n`` jobs of the mix (a chain counts as its three jobs)."""
        rng, singles = self.rng, []
        while n > 0:
            roll = rng.random()
            if roll < 0.07 and n >= 3:
                self.chain(doomed=rng.random() < 0.2)
                n -= 3
                continue
            delay = {"delay": round(rng.uniform(1, 5), 2)} if rng.random() < 0.1 else {}
            if roll < 0.40:
                singles.append(("quick", (), {}, delay))
            elif roll < 0.65:
                singles.append(("nap", (round(rng.uniform(0.05, 2), 3),), {}, delay))
            elif roll < 0.75:
                singles.append(("anap", (round(rng.uniform(0.05, 1), 3),), {}, delay))
            elif roll < 0.92:
                singles.append(("flaky", (rng.choice((1, 2)),), {}, delay))
            else:
                singles.append(("doomed", (), {}, delay))
            n -= 1
        if singles:
            self.submit(lambda: self.app.enqueue_many(singles))

    def chain(self, doomed: bool) -> None:
        head = self.submit(lambda: [self.app.enqueue("doomed" if doomed else "step", () if doomed else (0,))])
        if not head:
            return
        parent = head[0]
        for n in (1, 2):
            link = self.submit(lambda p=parent, n=n: [self.app.enqueue("step", (n,), depends_on=[p])])
            if not link:
                return
            if doomed:
                self.doomed_heads.add(link[0])
            parent = link[0]

    def submit(self, call: Any) -> list[str]:
        try:
            handles = call()
        except Exception as exc:  # an enqueue refused during the chaos is a finding, not a crash
            self.enqueue_errors.append(f"{type(exc).__name__}: {exc}")
            return []
        with self.lock:
            self.ids += [h.id for h in handles]
        return [h.id for h in handles]

    def records(self) -> dict[str, Job]:
        backend = self.app.portal.call(self.app.backend())
        found: dict[str, Job] = {}
        with self.lock:
            ids = list(self.ids)
        for i in range(0, len(ids), 500):
            for job in self.app.portal.call(backend.get_jobs(ids[i:i + 500])):
                found[job.id] = job
        return found


def chaos(soak: Soak) -> None:
    args, rng = soak.args, random.Random(soak.args.seed + 1)
    for _ in range(args.workers):
        soak.start_worker()
    stop = threading.Event()
    later = args.jobs - args.jobs // 2

    def trickle() -> None:  # the second half, in batches every 0.2 s, spread over the chaos
        t0, sent = time.monotonic(), 0
        while not stop.wait(0.2):
            due = min(later, round(later * (time.monotonic() - t0) / args.seconds))
            soak.enqueue_some(due - sent)
            sent = due

    enqueuer = threading.Thread(target=trickle, name="enqueue")
    enqueuer.start()
    end = time.monotonic() + args.seconds
    kills = terms = freezes = 0
    try:
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.5, 3))
            soak.reap()
            victim = rng.choice([w for w in soak.workers if w.proc.pid not in soak.frozen_pids] or soak.workers)
            roll = rng.random()
            if roll < args.sigstop and victim.proc.pid not in soak.frozen_pids:  # it stays, frozen a while
                soak.freeze(victim)
                freezes += 1
                continue
            name = "TERM" if roll < args.sigstop + args.sigterm else "KILL"
            soak.signal(victim, name)
            kills, terms = kills + (name == "KILL"), terms + (name == "TERM")
            soak.start_worker()
    finally:
        stop.set()
        enqueuer.join()
        for thaw in soak.thaws:  # every frozen worker runs again before the drain
            thaw.join()
    print(f"chaos over: {kills} kill -9, {terms} SIGTERM, {freezes} SIGSTOP, {len(soak.ids)} jobs accepted",
          flush=True)


def drain(soak: Soak) -> tuple[dict[str, Job], float | None]:
    """Leave one worker; wait (bounded) for every job to be terminal. Returns the records and
    the drain time (None if it did not drain)."""
    t0 = time.monotonic()
    for worker in soak.workers[:-1]:  # the youngest stays
        soak.signal(worker, "TERM")
    drained: float | None = None
    while time.monotonic() - t0 < soak.args.drain_timeout:
        soak.reap()
        records = soak.records()
        if len(records) == len(soak.ids) and all(j.status.terminal for j in records.values()):
            drained = time.monotonic() - t0
            break
        time.sleep(0.5)
    if drained is not None:  # a terminal job run again would show in the run files
        time.sleep(2 * soak.args.visibility)
    while soak.stopping:
        soak.reap()
        time.sleep(0.2)
    for worker in list(soak.workers):
        soak.signal(worker, "TERM")
    while soak.stopping:
        soak.reap()
        time.sleep(0.2)
    return soak.records(), drained


def runs_of(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every run line, by job, in time order (a line cut by a kill -9 is skipped)."""
    by_job: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                by_job[record["job"]].append(record)
    for lines in by_job.values():
        lines.sort(key=lambda r: (r["t"], r["e"] != "start"))
    return by_job


def explain(soak: Soak, jobs: dict[str, Job], by_job: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Count executions; note each re-run or vanished run that no signal explains."""
    counts: collections.Counter[str] = collections.Counter()
    for job_id, lines in by_job.items():
        starts = [r for r in lines if r["e"] == "start"]
        ends = {(r["pid"], r["attempt"], r["deliveries"]) for r in lines if r["e"] != "start"}
        oks = sum(r["e"] == "ok" for r in lines)
        counts["runs"] += len(starts)
        counts["successful runs"] += oks
        counts["jobs whose success ran twice or more"] += oks > 1
        rerun_checks(soak, job_id, starts, ends, counts)
        for start in starts:
            death = soak.death_of(start)
            if (start["pid"], start["attempt"], start["deliveries"]) in ends:
                continue
            if soak.frozen(start, math.inf):  # its lease passed on: the worker abandoned it (cancelled
                counts["runs abandoned after a SIGSTOP"] += 1  # a coroutine; a thread ends with the process)
            elif death is None or death[0] != "KILL":  # a SIGTERM lets runs (≤ 2 s) end within the grace
                soak.anomalies.append(f"job {job_id}: a run started in pid {start['pid']} at {start['t']:.3f} "
                                      f"never ended (worker: {soak.signals_of(start['pid'])})")
            else:
                counts["runs cut by kill -9"] += 1
        job = jobs.get(job_id)
        if job is not None and job.status.terminal and job.finished_at is not None:
            late = [r for r in starts if r["t"] > job.finished_at + 0.001 and not soak.frozen(r, r["t"])]
            for r in late[:1]:
                soak.anomalies.append(f"job {job_id}: ran again at {r['t']:.3f}, after it ended {job.status} at "
                                      f"{job.finished_at:.3f} (pid {r['pid']}: {soak.signals_of(r['pid'])})")
        if job is not None and job.status is Status.SUCCEEDED and not oks:
            soak.anomalies.append(f"job {job_id}: succeeded but no run of it succeeded")
    return dict(counts)


def rerun_checks(soak: Soak, job_id: str, starts: list[dict[str, Any]], ends: set[tuple[int, int, int]],
                 counts: collections.Counter[str]) -> None:
    """A run with the attempt number of the one before it is a re-run: tie it to a signal. A run
    with an older attempt number than one before it ran under a lease that had passed on."""
    for prev, nxt in itertools.pairwise(starts):
        if nxt["attempt"] < prev["attempt"]:
            if soak.frozen(nxt, nxt["t"]):
                counts["stale runs in a worker thawed after its lease passed on"] += 1
            else:
                soak.anomalies.append(f"job {job_id}: attempt went back from {prev['attempt']} to {nxt['attempt']} "
                                      f"(pid {nxt['pid']} at {nxt['t']:.3f}: {soak.signals_of(nxt['pid'])})")
        if nxt["attempt"] != prev["attempt"]:
            continue
        counts["re-runs (same attempt)"] += 1
        death = soak.death_of(prev)
        ended = (prev["pid"], prev["attempt"], prev["deliveries"]) in ends
        if death and death[0] == "KILL" and prev["t"] <= death[1] <= nxt["t"]:
            counts["re-runs explained by kill -9"] += 1
            counts["re-runs of a run that had ended (its outcome died with its worker)"] += ended
        elif soak.frozen(prev, nxt["t"]) or soak.frozen(nxt, nxt["t"]):
            counts["re-runs explained by SIGSTOP past the lease"] += 1
        else:
            soak.anomalies.append(f"job {job_id}: UNEXPLAINED re-run of attempt {nxt['attempt']}: first in pid "
                                  f"{prev['pid']} at {prev['t']:.3f} ({'ended' if ended else 'did not end'}; "
                                  f"worker: {soak.signals_of(prev['pid'])}), again in pid {nxt['pid']} at "
                                  f"{nxt['t']:.3f} (delivery {nxt['deliveries']})")


def check_statuses(soak: Soak, jobs: dict[str, Job]) -> None:
    for job_id in soak.ids:
        job = jobs.get(job_id)
        if job is None:
            soak.anomalies.append(f"job {job_id}: LOST (no record)")
            continue
        if not job.status.terminal:
            lease = f"{job.lease_expires_at - time.time():+.1f} s" if job.lease_expires_at else None
            due = f"{job.scheduled_at - time.time():+.1f} s" if job.scheduled_at else None
            soak.anomalies.append(
                f"job {job_id} ({job.task}): STUCK {job.status}, deliveries {job.deliveries}, attempt "
                f"{job.attempt}, lease expires {lease} from now, worker {job.worker_id}, due {due} from now, "
                f"depends_on {list(job.depends_on)}")
            continue
        expected = Status.CANCELLED if job_id in soak.doomed_heads else EXPECTED[job.task]
        error = (job.error or {}).get("type")
        if job.status is not expected and error != "DeliveryLimitExceeded":
            soak.anomalies.append(f"job {job_id} ({job.task}): ended {job.status}, expected {expected} "
                                  f"(error {error}: {(job.error or {}).get('message')})")


def log_errors(folder: Path) -> collections.Counter[str]:
    """ERROR and CRITICAL lines of the worker logs, by message (without the time stamp)."""
    seen: collections.Counter[str] = collections.Counter()
    for path in sorted(folder.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if " ERROR " in line or " CRITICAL " in line:
                seen[line.split(" ", 2)[-1][:200]] += 1
    return seen


def report(soak: Soak, jobs: dict[str, Job], drained: float | None, counts: dict[str, int]) -> None:
    statuses = collections.Counter(str(j.status) for j in jobs.values())
    errors = collections.Counter((j.error or {}).get("type") for j in jobs.values() if j.status is Status.FAILED)
    print(f"accepted {len(soak.ids)} jobs; enqueue errors: {len(soak.enqueue_errors)} "
          f"{soak.enqueue_errors[:3] or ''}")
    print("terminal: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) +
          (f"; failed by error type: {dict(errors)}" if errors else ""))
    print(f"drained in {drained:.2f} s" if drained is not None
          else f"NOT drained within {soak.args.drain_timeout:g} s")
    print("executions: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for line, n in log_errors(soak.folder).most_common(10):
        print(f"worker log ({n}×): {line}")
    for note in soak.notes:
        print(f"note: {note}")
    for anomaly in soak.anomalies[:50]:
        print(f"ANOMALY {anomaly}")
    if len(soak.anomalies) > 50:
        print(f"... and {len(soak.anomalies) - 50} more")
    if soak.anomalies or soak.args.keep:
        print(f"logs and run files: {soak.folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="engine base URL (the soak adds its own namespace)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs to enqueue, half up front (default 2000)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes during the chaos (default 3)")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the chaos (default 120)")
    parser.add_argument("--concurrency", type=int, default=4, help="each worker's --concurrency (default 4)")
    parser.add_argument("--pool", default="thread", choices=("thread", "process", "async"))
    parser.add_argument("--visibility", type=float, default=3.0, help="the queue's visibility timeout, s")
    parser.add_argument("--sigterm", type=float, default=0.2, help="share of signals that are SIGTERM")
    parser.add_argument("--sigstop", type=float, default=0.0,
                        help="share of signals that freeze a worker past its leases (SIGSTOP, SIGCONT later)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the namespace (to inspect it)")
    args = parser.parse_args()
    url = fresh_url(args.url, os.getpid() % 10000)
    os.environ["CONVEYOR_URL"] = url
    from bench import chaos_tasks

    app = Conveyor(url)
    app.tasks = dict(chaos_tasks.app.tasks)
    app.queue_declarations = dict(chaos_tasks.app.queue_declarations)
    folder = Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    (folder / "runs").mkdir()
    soak = Soak(url, folder, args, app, random.Random(args.seed))
    print(f"soak on {url.split('?')[0]} ({url.partition('?')[2] or 'own file'}), store "
          f"{os.environ.get('CONVEYOR_STORE_URL', '-')}: {args.jobs} jobs, {args.workers} workers × "
          f"{args.concurrency}, {args.seconds:.0f} s of chaos, visibility {args.visibility} s", flush=True)
    try:
        soak.enqueue_some(args.jobs // 2)
        chaos(soak)
        jobs, drained = drain(soak)
    finally:
        for worker in soak.workers + soak.stopping:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(10)
    check_statuses(soak, jobs)
    counts = explain(soak, jobs, runs_of(folder / "runs"))
    report(soak, jobs, drained, counts)
    failed = bool(soak.anomalies or soak.enqueue_errors or drained is None)
    if args.keep:
        app.close()
    else:
        drop(app)
        for store in (url, os.environ.get("CONVEYOR_STORE_URL", "")):
            if store.startswith("sqlite:///"):  # fresh_url's own temporary directory
                shutil.rmtree(Path(store.removeprefix("sqlite:///")).parent, ignore_errors=True)
        if not failed:
            shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
