"""A real server per test: uvicorn on a free port in a thread, over a fresh SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from conveyor import Conveyor
from conveyor.api import create_api
from conveyor.backends import create_backend
from conveyor.worker.worker import Worker
from tests.api import api_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_app(url: str) -> Conveyor:
    app = Conveyor(url)
    app.tasks = dict(api_app.app.tasks)
    app.queue_declarations = dict(api_app.app.queue_declarations)
    return app


class _Uvicorn(uvicorn.Server):
    """uvicorn's server whose main loop ends as soon as ``exit_soon`` asks, not at its next 0.1 s tick
    (a test's teardown waited for it: ~0.05 s each, over a few hundred tests)."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):  # what uvicorn's own loop does on each tick
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def exit_soon(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(wake.set)


class Server:
    """uvicorn serving ``create_api(app, **options)`` in a thread until ``stop``."""

    def __init__(self, app: Conveyor, **options: Any) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = create_api(app, **options)
        config = uvicorn.Config(self.api, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = _Uvicorn(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def stop(self) -> None:
        self.http.close()
        self.server.exit_soon()
        self.thread.join(10)


class WorkerThread:
    """A real ``Worker`` on its own event loop in a thread."""

    def __init__(self, app: Conveyor, **options: Any) -> None:
        self.worker = Worker(app, scheduler=False, heartbeat=0.2, **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.worker.run(),), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.worker.stop)
        self.thread.join(15)
        with contextlib.suppress(Exception):
            self.loop.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/conveyor.db"


@pytest.fixture
def app(url: str) -> Iterator[Conveyor]:
    app = make_app(url)
    yield app
    app.close()  # the loop its portal opened for a test's own calls (left to the GC: "unclosed event loop")


@pytest.fixture
def server(app: Conveyor) -> Iterator[Server]:
    s = Server(app, tokens="")
    yield s
    s.stop()


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server over each engine in a namespace of its own (a Redis prefix, a PostgreSQL
    schema), dropped afterwards: for what an engine could get wrong (e.g. the text it stores)."""
    namespace = f"api_{uuid.uuid4().hex[:12]}"
    url = {"sqlite": f"sqlite:///{tmp_path}/conveyor.db",
           "redis": f"redis://127.0.0.1:6379/0?prefix={namespace}",
           "postgresql": f"postgresql://postgres@127.0.0.1:5432/test?schema={namespace}"}[request.param]
    s = Server(make_app(url), tokens="")
    yield s
    s.stop()
    if request.param != "sqlite":
        drop_namespace(url)


def drop_namespace(url: str) -> None:
    """Delete what a test stored under the Redis prefix or PostgreSQL schema of ``url``."""

    async def drop() -> None:
        backend = create_backend(url)
        await backend.open()
        try:
            await backend.drop()  # type: ignore[attr-defined]
        finally:
            await backend.close()

    asyncio.run(drop())


@pytest.fixture
def http(server: Server) -> httpx.Client:
    return server.http


@pytest.fixture
def worker(url: str) -> Iterator[WorkerThread]:
    w = WorkerThread(make_app(url), concurrency=4)
    yield w
    w.stop()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(interval)
