"""The conformance suite: every engine behind ``conveyor.backends.base.Backend`` passes it.

Each test gets its own namespace: a fresh SQLite file, a Redis key prefix, a PostgreSQL
schema. Nothing is skipped: an engine whose client library is missing or whose service does
not answer fails (a CI without Redis must not look green).
``redis-cluster`` runs the Redis engine on a real 3-primary Redis Cluster that the
``redis_cluster`` fixture starts once per session on free local ports and shuts down afterwards.
Times are passed explicitly (``now``) instead of sleeping, so the suite is fast and exact.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
    "redis-cluster": ("conveyor.backends.redis", "RedisBackend"),
    "postgresql": ("conveyor.backends.postgres", "PostgresBackend"),
    "amqp": ("conveyor.backends.amqp", "AMQPBackend"),
}

OpenBackend = Callable[[], Awaitable[Backend]]


def _free_cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a redis cluster node")


def _cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=30, check=False).stdout


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """Starts a 3-primary Redis Cluster on free ports in a temporary directory: "host:port" of a node."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are needed for the redis-cluster engine")
    workdir = tempfile.mkdtemp(prefix="conveyor-cluster-")
    ports: list[int] = []
    try:
        for _ in range(3):
            port = _free_cluster_port()
            subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                            "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                            "--daemonize", "yes", "--dir", workdir, "--logfile", f"redis-{port}.log"],
                           check=True, timeout=30)
            ports.append(port)
        deadline = time.monotonic() + 10
        while not all(_cli(p, "ping").strip() == "PONG" for p in ports):
            if time.monotonic() > deadline:
                pytest.fail("the redis cluster nodes did not start")
            time.sleep(0.05)
        created = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                                  "--cluster-replicas", "0", "--cluster-yes"],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert created.returncode == 0, created.stdout + created.stderr
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in _cli(p, "cluster", "info") for p in ports):
            if time.monotonic() > deadline:
                pytest.fail("the redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        yield f"127.0.0.1:{ports[0]}"
    finally:
        for port in ports:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _cli(port, "shutdown", "nosave")
        shutil.rmtree(workdir, ignore_errors=True)


def _url(engine: str, tmp_path: Path, namespace: str, cluster: str = "") -> str:
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    if engine == "redis":
        return f"redis://127.0.0.1:6379/0?prefix={namespace}"
    if engine == "redis-cluster":
        return f"redis+cluster://{cluster}/?prefix={namespace}"
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
    getattr(importlib.import_module(module), name)  # a missing engine fails the test, never skips it
    cluster = request.getfixturevalue("redis_cluster") if engine == "redis-cluster" else ""
    url = _url(engine, tmp_path, f"conformance_{uuid.uuid4().hex[:12]}", cluster)
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


#: Each wait's timeout in ``idle_until_leased``: far longer than the delays the tests use.
IDLE_WAIT = 5.0


@pytest.fixture
def idle_until_leased() -> Callable[[Backend], Awaitable[tuple[Lease, int]]]:
    """Claims and waits as an idle worker does, with long waits, until a job is leased: the lease
    and how many claims it took (a wait may end early, but not every time)."""

    async def idle(backend: Backend) -> tuple[Lease, int]:
        give_up = time.monotonic() + 3.0
        waits: list[float] = []
        while time.monotonic() < give_up:
            leases = await backend.claim(["default"], 4, "worker-1", time.time())
            if leases:
                assert len(leases) == 1
                return leases[0], len(waits) + 1
            started = time.monotonic()
            await backend.wait_for_work(["default"], IDLE_WAIT)
            waits.append(round(time.monotonic() - started, 3))
        raise AssertionError(f"no job was leased within 3 s (waits of {waits} s)")

    return idle


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


@pytest.fixture
async def pg() -> AsyncIterator[Any]:
    """A PostgreSQL backend in a schema of its own, dropped afterwards (PostgreSQL-only tests)."""
    from conveyor.backends.postgres import PostgresBackend

    backend = PostgresBackend(f"postgresql://postgres@127.0.0.1:5432/test?schema=pgonly_{uuid.uuid4().hex[:12]}")
    await backend.open()
    yield backend
    await backend.drop()
    await backend.close()
