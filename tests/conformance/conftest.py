"""The conformance suite: every engine behind ``conveyor.backends.base.Backend`` passes it.

Each test gets its own namespace: a fresh SQLite file, a Redis key prefix, a PostgreSQL
schema. An engine whose module is not importable yet is skipped; an engine that imports but
whose service does not answer fails (a CI without Redis must not look green).
Times are passed explicitly (``now``) instead of sleeping, so the suite is fast and exact.
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import create_backend
from conveyor.backends.base import Backend, Lease
from conveyor.core.ids import uuid7
from conveyor.core.job import Job

#: engine → (module, class) behind ``create_backend``
ENGINES = {
    "sqlite": ("conveyor.backends.sqlite", "SQLiteBackend"),
    "redis": ("conveyor.backends.redis", "RedisBackend"),
    "postgresql": ("conveyor.backends.postgres", "PostgresBackend"),
    "amqp": ("conveyor.backends.amqp", "AMQPBackend"),
}

OpenBackend = Callable[[], Awaitable[Backend]]


def _url(engine: str, tmp_path: Path, namespace: str) -> str:
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    if engine == "redis":
        return f"redis://127.0.0.1:6379/0?prefix={namespace}"
    if engine == "amqp":  # job records in a fresh SQLite file (CONVEYOR_STORE_URL, set below)
        return f"amqp://guest:guest@127.0.0.1:5672/?prefix={namespace}"
    return f"postgresql://postgres@127.0.0.1:5432/test?schema={namespace}"


@pytest.fixture(params=list(ENGINES))
async def open_backend(request: pytest.FixtureRequest, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpenBackend]:
    """Opens backends on this test's namespace (a second one is another process's view)."""
    engine = request.param
    if engine == "amqp":
        monkeypatch.setenv("CONVEYOR_STORE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    module, name = ENGINES[engine]
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        pytest.skip("backend module not written yet")
    url = _url(engine, tmp_path, f"conformance_{uuid.uuid4().hex[:12]}")
    opened: list[Backend] = []

    async def open_one() -> Backend:
        backend = create_backend(url)
        await backend.open()
        opened.append(backend)
        return backend

    yield open_one
    for backend in reversed(opened):
        drop = getattr(backend, "drop", None)
        if drop is not None and backend is opened[0]:
            await drop()
        await backend.close()


@pytest.fixture
async def backend(open_backend: OpenBackend) -> Backend:
    """The engine under test, opened on a namespace of its own."""
    return await open_backend()


@pytest.fixture
def new_job() -> Callable[..., Job]:
    """Builds a job as the layer above would submit it: a fresh UUIDv7, created now."""

    def make(task: str = "conformance.echo", **fields: Any) -> Job:
        fields.setdefault("created_at", time.time())
        return Job(id=uuid7(), task=task, **fields)

    return make


@pytest.fixture
def submit(backend: Backend, new_job: Callable[..., Job]) -> Callable[..., Awaitable[Job]]:
    """Enqueues one new job and returns it as stored."""

    async def submit_one(task: str = "conformance.echo", **fields: Any) -> Job:
        [(job, created)] = await backend.enqueue([new_job(task, **fields)])
        assert created
        return job

    return submit_one


@pytest.fixture
def claim_one(backend: Backend) -> Callable[..., Awaitable[Lease]]:
    """Claims exactly one job (fails the test when none is ready)."""

    async def claim(queue: str = "default", now: float | None = None, worker: str = "worker-1") -> Lease:
        leases = await backend.claim([queue], 1, worker, time.time() if now is None else now)
        assert len(leases) == 1, "expected a job to be ready"
        return leases[0]

    return claim


@pytest.fixture
def fetch(backend: Backend) -> Callable[[str], Awaitable[Job]]:
    """Reads one stored job (fails the test when it is unknown)."""

    async def fetch_one(job_id: str) -> Job:
        jobs = await backend.get_jobs([job_id])
        assert len(jobs) == 1, f"job {job_id} is not stored"
        return jobs[0]

    return fetch_one
