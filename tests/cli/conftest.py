"""Each test gets its own SQLite file; the commands run in-process (fast) or as real processes."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor.cli import main

APP_SOURCE = '''
"""Tasks for the command-line tests."""
import time

from conveyor import Context, Conveyor

app = Conveyor()
app.queue("default", visibility_timeout=30)


@app.task
def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@app.task(max_retries=0)
def boom(ctx: Context) -> None:
    raise ValueError("boom")


@app.task(queue="media")
def steps(ctx: Context, n: int = 3, pause: float = 0.05) -> str:
    for i in range(n):
        ctx.progress(i / n, f"step {i}")
        time.sleep(pause)
    return "done"


@app.periodic("0 0 29 2 *", catch_up=None)  # listed by `conveyor schedules`; no test lives to see it run
def leap_day(ctx: Context) -> None: ...
'''
APP = "cli_test_app:app"


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the test app module ``cli_test_app``."""
    path = tmp_path_factory.mktemp("cli_app")
    (path / "cli_test_app.py").write_text(APP_SOURCE)
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``conveyor`` against this test's database, in-process or as a subprocess."""

    def __init__(self, tmp_path: Path, app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = f"sqlite:///{tmp_path}/conveyor.db"
        self.tmp_path = tmp_path
        self.app_dir = app_dir
        self.capsys = capsys
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_URL=self.url, CONVEYOR_APP=APP, PYTHONPATH=str(self.app_dir))
        return env

    def __call__(self, *args: str) -> Result:
        """``main([...])`` in this process, with --url and --app given explicitly."""
        self.capsys.readouterr()
        code = main([*args, "--url", self.url, "--app", APP])
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err
        return Result(code, out, err)

    def run(self, *args: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> Result:
        """``python -m conveyor.cli ...`` as a real process (URL and app from the environment)."""
        proc = subprocess.run(
            [sys.executable, "-m", "conveyor.cli", *args],
            env=env or self.env(), cwd=self.tmp_path, capture_output=True, text=True, timeout=timeout,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def run_each(self, *argvs: list[str], timeout: float = 30.0, env: dict[str, str] | None = None) -> list[Result]:
        """``run(*argv)`` for each of ``argvs``, side by side (independent commands: each process's
        start-up, mostly imports, no longer waits for the one before); the results in order."""
        with ThreadPoolExecutor(len(argvs)) as pool:
            return list(pool.map(lambda argv: self.run(*argv, timeout=timeout, env=env), argvs))

    def background_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """A ``conveyor worker`` process, killed when the test ends."""
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "worker", *args],
            env=self.env(), cwd=self.tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()  # the child has its own copy
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        """What the background workers wrote (for assertion messages)."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("worker-*.log")))

    def submit(self, *args: str) -> str:
        result = self(*["submit", *args])
        assert result.code == 0, result.err
        return result.out.strip()

    def burst(self) -> None:
        """Run a worker in-process until no job is ready."""
        assert self("worker", "--burst", "--no-scheduler").code == 0

    def job(self, job_id: str) -> dict[str, Any]:
        result = self("status", job_id, "--json")
        assert result.code == 0, result.err
        data: dict[str, Any] = result.json()
        return data

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses or time.monotonic() > deadline:
                return job
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def cli(tmp_path: Path, app_dir: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    for name in [k for k in os.environ if k.startswith("CONVEYOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.syspath_prepend(str(app_dir))
    runner = Cli(tmp_path, app_dir, capsys)
    yield runner
    runner.stop()


def one_error_line(err: str) -> str:
    """The single ``conveyor...: error: ...`` line of stderr (asserting there is exactly one line)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("conveyor") and ": error: " in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def on_a_terminal(cli: Cli, argv: list[str], keys: bytes = b"", after: bytes = b"", columns: int | None = None,
                  timeout: float = 20.0) -> tuple[str, int]:
    """Run ``conveyor argv`` on a pseudo-terminal (``columns`` wide, else 80), type ``keys`` once
    ``after`` shows; (output, exit code)."""
    env = {**cli.env(), **({"COLUMNS": str(columns)} if columns else {})}
    leader, follower = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", *argv], env=env, cwd=cli.tmp_path,
                            stdin=follower, stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    out, typed, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 0.2)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 4096)
            except OSError:  # the command ended: no one holds the terminal any more
                break
            out += data
            if keys and after in out and not typed:
                os.write(leader, keys)
                typed = True
        return out.decode(errors="replace"), proc.wait(timeout=10)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
