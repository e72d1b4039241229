"""Time spent inside Redis by Conveyor's scripts, per job (``INFO commandstats``).

    .venv/bin/python -m bench.redis_scripts [--url redis://127.0.0.1:6379/0] [--jobs 16000] [--runs 3]

Per run, on a fresh prefix: ``--jobs`` single enqueues (one script call each), then the same
number of jobs claimed 8 at a time and finished 8 at a time (a worker's cycle at the default
concurrency), then one ``enqueue_many`` of ``--jobs``. Each figure is the script's time in
Redis divided by the jobs it handled: what the server spends, whatever the client and the
network add. Run it on an otherwise idle Redis: ``CONFIG RESETSTAT`` clears the server's
command statistics.
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis

from bench.bench import client, drop, fresh_url
from conveyor.backends.base import Lease, Outcome
from conveyor.core.job import Status

CYCLE = 8  #: jobs per claim and per finish, as a worker at the default concurrency


def script_usec(r: redis.Redis) -> float:
    stats = r.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0))


def one_run(url: str, n: int) -> dict[str, float]:
    app = client(url)
    task = app.tasks["noop"]
    app.enqueue(task)  # loads the scripts
    r = redis.Redis.from_url(url.split("?")[0])
    out: dict[str, float] = {}

    r.config_resetstat()
    for _ in range(n):
        app.enqueue(task)
    out["enqueue single"] = script_usec(r) / n

    async def cycles() -> tuple[float, float]:
        backend = await app.backend()
        leases: list[Lease] = []
        r.config_resetstat()
        while len(leases) < n:
            leases += await backend.claim(["default"], CYCLE, "bench", time.time())
        claim = script_usec(r)
        r.config_resetstat()
        for i in range(0, len(leases), CYCLE):
            await backend.finish([Outcome(lease.job.id, lease.token, Status.SUCCEEDED)
                                  for lease in leases[i:i + CYCLE]], time.time())
        return claim / len(leases), script_usec(r) / len(leases)

    out["claim"], out["finish"] = app.portal.call(cycles())

    r.config_resetstat()
    app.enqueue_many([(task, (), {}, {}) for _ in range(n)])
    out["enqueue batch"] = script_usec(r) / n

    drop(app)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=16000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        runs.append(one_run(fresh_url(args.url, run), args.jobs))
        print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f} µs" for k, v in runs[-1].items()), flush=True)
    print(f"\nmicroseconds inside Redis per job, median of {args.runs} ({args.jobs:,} jobs; claim and finish "
          f"{CYCLE} at a time):")
    print("| enqueue single | claim | finish | enqueue batch |\n|---|---|---|---|")
    print("| " + " | ".join(f"{statistics.median(r[k] for r in runs):.2f}"
                            for k in ("enqueue single", "claim", "finish", "enqueue batch")) + " |")


if __name__ == "__main__":
    main()
