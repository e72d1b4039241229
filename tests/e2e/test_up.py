"""``conveyor up`` end to end: a real process tree, a job in over HTTP, SIGINT stops everything, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


@pytest.mark.slow
def test_up__job_runs__sigint_stops_all_children_exit_0(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), CONVEYOR_URL=f"sqlite:///{tmp_path}/conveyor.db")
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "up", "--app", "tests.api.api_app:app", "--port", str(port),
         "--workers", "2", "--grace", "5", "--log-level", "WARNING"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.1)
        kids = children_of(proc.pid)
        assert len(kids) == 3  # server + 2 workers
        r = subprocess.run(["curl", "-s", "-X", "POST", f"{url}/v1/jobs", "-H", "content-type: application/json",
                            "-d", '{"task": "add", "args": [20, 22]}'], capture_output=True, text=True, timeout=10)
        job_id = httpx.Response(200, content=r.stdout).json()["id"]
        deadline = time.monotonic() + 20
        while (job := httpx.get(f"{url}/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["result"] == 42
        workers = httpx.get(f"{url}/v1/workers").json()["items"]
        assert len(workers) == 2

        # a crashed worker is restarted
        os.kill(kids[1], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len([k for k in children_of(proc.pid) if alive(k)]) < 3 or kids[1] in children_of(proc.pid):
            assert time.monotonic() < deadline, "crashed child not restarted"
            time.sleep(0.1)
        kids = children_of(proc.pid)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, (tmp_path / "up.log").read_text()
        deadline = time.monotonic() + 10
        while any(alive(k) for k in kids):
            assert time.monotonic() < deadline, "children still alive after up exited"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for k in children_of(proc.pid):
            os.kill(k, signal.SIGKILL)
        log.close()


def test_up__beyond_loopback_without_tokens__exit_2_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CONVEYOR_URL=f"sqlite:///{tmp_path}/conveyor.db")
    env.pop("CONVEYOR_API_TOKENS", None)
    for command in ("up", "server"):
        r = subprocess.run([sys.executable, "-m", "conveyor.cli", command, "--app", "tests.api.api_app:app",
                            "--host", "0.0.0.0"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--insecure" in r.stderr


def test_up__port_in_use__exit_1_one_line_instead_of_restarting_forever(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(ROOT), CONVEYOR_URL=f"sqlite:///{tmp_path}/conveyor.db")
        r = subprocess.run([sys.executable, "-m", "conveyor.cli", "up", "--app", "tests.api.api_app:app",
                            "--port", str(port)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"conveyor up: error: cannot listen on 127.0.0.1:{port}: "
                                             "Address already in use"]
