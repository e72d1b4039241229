"""Real worker processes against a fresh SQLite file per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.core.job import Status
from tests.e2e import jobs_app

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.jobs_app:app"


class Env:
    """A test's backend URL, a client app with the test tasks, and its worker processes."""

    def __init__(self, tmp_path: Path, url: str | None = None) -> None:
        self.url = url or f"sqlite:///{tmp_path}/conveyor.db"
        self.log = tmp_path / "events.jsonl"
        self.client = Conveyor(self.url)
        self.client.tasks = dict(jobs_app.app.tasks)
        self.client.queue_declarations = dict(jobs_app.app.queue_declarations)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp_path = tmp_path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, CONVEYOR_URL=self.url, TEST_LOG=str(self.log), PYTHONPATH=str(ROOT))
        env.update(extra)
        return env

    def worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``conveyor worker`` for the test app; output goes to a log file in tmp_path."""
        out = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "worker", "--app", APP, *args],
            env=env or self.env(), stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp_path,
        )
        out.close()  # the child has its own copy
        self.procs.append(proc)
        return proc

    def enqueue(self, task: str, *args: object, **kwargs: object):
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in {"queue", "priority", "delay", "eta",
                                                                  "max_retries", "timeout", "depends_on",
                                                                  "key", "metadata", "webhook"}}
        return self.client.enqueue(task, args, kwargs, **options)

    def wait_all(self, handles, timeout: float = 30.0, statuses=Status) -> None:
        """Wait until every job is terminal (bounded)."""
        deadline = time.monotonic() + timeout
        pending = list(handles)
        while pending and time.monotonic() < deadline:
            pending = [h for h in pending if not h.refresh().status.terminal]
            if pending:
                time.sleep(0.05)
        assert not pending, f"{len(pending)} jobs not finished after {timeout} s: {pending[:3]}"

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("worker-*.log")))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait(10)


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    yield env
    env.stop()
    env.client.close()


ENGINES = {
    "sqlite": lambda tmp, name: f"sqlite:///{tmp}/conveyor.db",
    "redis": lambda tmp, name: f"redis://127.0.0.1:6379/0?prefix={name}",
    "postgresql": lambda tmp, name: f"postgresql://postgres@127.0.0.1:5432/test?schema={name}",
}


@pytest.fixture(params=list(ENGINES))
def e2e_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """``e2e`` on every engine: each test in its own namespace, dropped afterwards."""
    name = f"e2e_{uuid.uuid4().hex[:10]}"
    env = Env(tmp_path, ENGINES[request.param](tmp_path, name))
    yield env
    env.stop()
    drop_namespace(env)


def drop_namespace(env: Env) -> None:
    """Drop the test's keys, schema or queues (where the engine can), and close its client."""
    async def drop() -> None:
        backend = await env.client.backend()
        if hasattr(backend, "drop"):
            await backend.drop()

    env.client.portal.call(drop())
    env.client.close()


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def workers_until_terminal(env: Env, handle, *args: str, timeout: float = 60.0) -> None:
    """Start ``conveyor worker *args`` again each time one exits (a task that kills its process)
    until ``handle``'s job is terminal (bounded); then leave the last worker 3 s to run the job a
    further time, were it wrongly handed out again (it waited out a 10 s exit that never came)."""
    deadline = time.monotonic() + timeout
    while not handle.refresh().status.terminal and time.monotonic() < deadline:
        worker = env.worker(*args)
        ends = min(deadline, time.monotonic() + 10)
        while worker.poll() is None and not handle.refresh().status.terminal and time.monotonic() < ends:
            time.sleep(0.05)
    time.sleep(3.0)
