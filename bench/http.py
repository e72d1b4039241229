"""The HTTP API's benchmark: submits per second (single and batch) and submit-to-start latency.

    .venv/bin/python -m bench.http [--runs 3] [--url redis://127.0.0.1:6379/0]   # needs `wrk` (Debian)

One `conveyor server` process, on SQLite (a fresh file per run) or on ``--url`` (a fresh key
prefix or schema per run, dropped afterwards). Single submits: `wrk` with 16
keep-alive connections POSTs one job per request for 5 s. Batch: 20 requests of 1,000 jobs
from one httpx client. Latency: with one idle worker, 200 jobs submitted one at a time;
latency is started_at − created_at from the job records (both stamped on this machine).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import CHILD_PYTHONPATH
from bench.bench import client, drop, fresh_url

POST_LUA = """wrk.method = "POST"
wrk.body = '{"task": "noop"}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CONVEYOR_URL=url, PYTHONPATH=CHILD_PYTHONPATH)
    return subprocess.Popen([sys.executable, "-m", "conveyor.cli", *cmd, "--app", "bench.tasks:app"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def one_run(base_url: str, run: int) -> tuple[float, float, float, float]:
    url = fresh_url(base_url, run)
    try:
        return measure(url)
    finally:
        drop(client(url))


def measure(url: str) -> tuple[float, float, float, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start(["server", "--port", str(port), "--log-level", "WARNING"], url)
    try:
        wait_ready(base)
        lua = Path(tempfile.mkstemp(suffix=".lua")[1])
        lua.write_text(POST_LUA)
        out = subprocess.run(["wrk", "-t1", "-c16", "-d5s", "-s", str(lua), f"{base}/v1/jobs"],
                             capture_output=True, text=True, check=True).stdout
        single = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        with httpx.Client(base_url=base, timeout=60) as client:
            body = {"jobs": [{"task": "noop"} for _ in range(1000)]}
            t0 = time.perf_counter()
            for _ in range(20):
                assert client.post("/v1/jobs/batch", json=body).status_code == 202
            batch = 20_000 / (time.perf_counter() - t0)
            worker = start(["worker", "--no-scheduler"], url)
            try:
                latencies = latency(client)
            finally:
                stop(worker)
    finally:
        stop(server)
    return single, batch, statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def latency(client: httpx.Client, samples: int = 200) -> list[float]:
    deadline = time.monotonic() + 300
    while client.get("/v1/queues/default").json()["queued"] and time.monotonic() < deadline:
        time.sleep(0.5)  # the batch jobs drain first
    out = []
    for _ in range(samples):
        time.sleep(0.02)
        job = client.post("/v1/jobs", json={"task": "noop"}).json()
        for _ in range(500):
            job = client.get(f"/v1/jobs/{job['id']}").json()
            if job["started_at"]:
                break
            time.sleep(0.005)
        out.append(_ms(job["started_at"]) - _ms(job["created_at"]))
    return sorted(out)


def _ms(stamp: str) -> float:
    from conveyor.serialization import from_rfc3339

    return from_rfc3339(stamp) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default="sqlite:///bench.db", help="the engine (a fresh store per run)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.http: needs `wrk` for the single submits (Debian: apt-get install wrk)")
    rows = []
    for run in range(args.runs):
        row = one_run(args.url, run)
        rows.append(row)
        print(f"run {run + 1}: single {row[0]:,.0f} submits/s, batch {row[1]:,.0f} jobs/s, "
              f"submit-to-start p50 {row[2]:.2f} ms p99 {row[3]:.2f} ms", flush=True)
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    engine = args.url.split(":", 1)[0]
    print(f"\nmedian of {args.runs} (one server process, {engine}):")
    print("| single submits (16 keep-alive connections) | batch submits | submit-to-start p50 / p99 |")
    print("|---|---|---|")
    print(f"| {med[0]:,.0f} /s | {med[1]:,.0f} jobs/s | {med[2]:.2f} / {med[3]:.2f} ms |")


if __name__ == "__main__":
    main()
