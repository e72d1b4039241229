"""``conveyor up`` end to end: a real process tree, a job in over HTTP, SIGINT stops everything, exit 0."""

from __future__ import annotations

import contextlib
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
    log.close()  # the child has its own copy
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


def start_up(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``conveyor up`` for the API test app, logging to tmp_path/up.log."""
    env = env or dict(os.environ, PYTHONPATH=str(ROOT), CONVEYOR_URL=f"sqlite:///{tmp_path}/conveyor.db")
    with open(tmp_path / "up.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "up", "--app", "tests.api.api_app:app", "--grace", "1",
             "--log-level", "WARNING", *args],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )


def wait_for_children(proc: subprocess.Popen[bytes], count: int, tmp_path: Path) -> list[int]:
    deadline = time.monotonic() + 20
    while len(kids := [k for k in children_of(proc.pid) if alive(k)]) < count:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
        time.sleep(0.1)
    return kids


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def stop_up(proc: subprocess.Popen[bytes], kids: list[int]) -> None:
    """Leave nothing behind, whatever the test saw."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for k in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(k, signal.SIGKILL)


@pytest.mark.slow
def test_up__sighup_as_when_its_terminal_closes__stops_every_child_exit_0(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()  # where up makes its metrics directory
    env = dict(os.environ, PYTHONPATH=str(ROOT), CONVEYOR_URL=f"sqlite:///{tmp_path}/conveyor.db",
               TMPDIR=str(tmp_path / "tmp"))
    proc = start_up(tmp_path, "--port", str(free_port()), env=env)
    kids: list[int] = []
    try:
        kids = wait_for_children(proc, 3, tmp_path)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(20) == 0, (tmp_path / "up.log").read_text()
        assert wait_gone(kids, 10) == [], "children still running after up exited"
        assert list((tmp_path / "tmp").iterdir()) == []  # its metrics directory too
    finally:
        stop_up(proc, kids)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_up__killed_with_sigkill__its_children_stop_by_themselves_and_the_next_up_clears_its_files(
    tmp_path: Path,
) -> None:
    tmp = tmp_path / "tmp"  # where up makes its metrics directory
    tmp.mkdir()
    (tmp / "conveyor-metrics-1-of-init").mkdir()  # a live process's: kept
    env = dict(os.environ, PYTHONPATH=str(ROOT), CONVEYOR_URL=f"sqlite:///{tmp_path}/conveyor.db", TMPDIR=str(tmp))
    port = free_port()
    proc = start_up(tmp_path, "--port", str(port), env=env)
    kids: list[int] = []
    try:
        kids = wait_for_children(proc, 3, tmp_path)
        proc.kill()
        proc.wait(10)
        assert wait_gone(kids, 15) == [], "server and workers left running without their supervisor"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        assert len(list(tmp.iterdir())) == 2  # no clean-up ran

        proc = start_up(tmp_path, "--port", str(free_port()), env=env)
        kids = wait_for_children(proc, 3, tmp_path)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, (tmp_path / "up.log").read_text()
        assert [p.name for p in tmp.iterdir()] == ["conveyor-metrics-1-of-init"]
    finally:
        stop_up(proc, kids)


def test_up__unreachable_engine__exit_1_one_line_instead_of_restarting_workers(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    proc = start_up(tmp_path, "--port", str(free_port()), "--url", "redis://127.0.0.1:1/0")
    try:
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop_up(proc, children_of(proc.pid))
    lines = (tmp_path / "up.log").read_text().strip().splitlines()
    assert code == 1, lines
    assert len(lines) == 1 and lines[0].startswith("conveyor: error: redis at 127.0.0.1:1 is unreachable"), lines


SLOW_APP = '''
import contextlib
import os
import pathlib
import time

from conveyor import Conveyor

pathlib.Path(os.environ["LOADING_MARK"]).write_text("loading")
time.sleep(10)
app = Conveyor()
'''


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_up__stop_signal_while_the_app_loads__exit_0_quietly(tmp_path: Path, signum: signal.Signals) -> None:
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    mark = tmp_path / "loading"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", LOADING_MARK=str(mark),
               CONVEYOR_URL=f"sqlite:///{tmp_path}/conveyor.db")
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "up", "--app", "slow_app:app",
                             "--port", str(free_port())],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not mark.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=20)
    finally:
        stop_up(proc, [])
    assert proc.returncode == 0, out.decode()
    assert b"Traceback" not in out and b"interrupted" not in out, out.decode()
