"""What only the embedded engine promises: URLs, WAL, versioned schema, clear outage errors."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conveyor import Context, Conveyor
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.backends.sqlite.backend import path_from_url
from conveyor.core.errors import BackendUnavailable, ConfigurationError
from conveyor.core.ids import uuid7
from conveyor.core.job import Job


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///conveyor.db", "conveyor.db"),
    ("sqlite:///./data/jobs.db", "./data/jobs.db"),
    ("sqlite:////var/lib/conveyor.db", "/var/lib/conveyor.db"),
])
def test_url__relative_and_absolute__name_the_file(url, path):
    assert path_from_url(url) == path


def test_url__no_file__is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        SQLiteBackend("sqlite://")


def test_url__in_memory__sync_enqueue_refused_saying_why_and_what_to_use():
    """Each connection to ``:memory:`` is a new database: the enqueue printed an id, and
    ``get_job`` of that id (another connection) found nothing, nor did any worker."""
    app = Conveyor("sqlite:///:memory:")

    @app.task
    def noop(ctx: Context) -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        noop.enqueue()
    assert "sqlite:///:memory: cannot hold jobs" in str(caught.value)
    assert "use a file, e.g. sqlite:////tmp/conveyor-test.db" in str(caught.value)
    app.close()


async def test_open__relative_url__creates_file_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backend = SQLiteBackend("sqlite:///conveyor.db")
    await backend.open()
    await backend.close()

    assert (tmp_path / "conveyor.db").exists()


async def test_open__new_file__is_wal_with_latest_schema_version(tmp_path):
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'c.db'}")
    await backend.open()
    await backend.close()

    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    conn.close()


async def test_open__missing_directory__backend_unavailable_naming_the_file(tmp_path):
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'nope' / 'c.db'}")

    with pytest.raises(BackendUnavailable, match=r"c\.db"):
        await backend.open()


async def test_open__newer_schema__refused_with_upgrade_hint(tmp_path):
    conn = sqlite3.connect(tmp_path / "c.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()

    with pytest.raises(ConfigurationError, match="upgrade"):
        await SQLiteBackend(f"sqlite:///{tmp_path / 'c.db'}").open()


async def test_open__file_of_an_older_schema__upgraded_in_place_with_its_jobs(tmp_path, monkeypatch):
    import conveyor.backends.sqlite.connection as connection

    url = f"sqlite:///{tmp_path / 'c.db'}"
    every = connection.migrations()
    with monkeypatch.context() as older:  # a file written by a Conveyor that knew only migration 2
        older.setattr(connection, "migrations", lambda: every[:2])
        backend = SQLiteBackend(url)
        await backend.open()
        jobs = [Job(id=uuid7(), task="t", created_at=time.time()) for _ in range(3)]
        await backend.enqueue(jobs)
        await backend.close()

    backend = SQLiteBackend(url)
    await backend.open()
    now = time.time()
    [lease] = await backend.claim(["default"], 1, "w", now)
    await backend.sweep(now + 31)  # its lease ran out: put back in its place
    got = [(await backend.claim(["default"], 1, "w", now + 31))[0].job.id for _ in range(3)]
    await backend.close()

    assert lease.job.id == jobs[0].id
    assert got == [j.id for j in jobs]
    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == every[-1][0]
    conn.close()


async def test_write__file_locked_by_another_process__backend_unavailable(tmp_path, monkeypatch):
    import conveyor.backends.sqlite.connection as connection

    path = tmp_path / "c.db"
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.open()
    monkeypatch.setattr(connection, "BUSY_TIMEOUT", 0.05)
    backend._connection().execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendUnavailable, match=r"locked .*still busy after 0\.05 s"):
            await backend.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])
    finally:
        other.execute("ROLLBACK")
        other.close()
        await backend.close()


async def test_open__new_file_written_by_another_process_in_the_old_journal_mode__waits_for_it(tmp_path):
    """Processes that open a new file together (`conveyor up`, a worker and the CLI): switching
    the file to WAL fails at once while another writes in the old journal mode; open waits."""
    path = tmp_path / "c.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE elsewhere (x)")
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: (time.sleep(0.3), other.execute("COMMIT"), other.close()))
        started = time.monotonic()
        backend = SQLiteBackend(f"sqlite:///{path}")
        await backend.open()
        waited = time.monotonic() - started
        [(job, created)] = await backend.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])
        await backend.close()

    assert created and job.status == "queued"
    assert 0.25 < waited < 2.0


async def test_reopen__existing_file__keeps_jobs(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    first = SQLiteBackend(url)
    await first.open()
    [(job, _)] = await first.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])
    await first.close()

    second = SQLiteBackend(url)
    await second.open()
    try:
        assert [j.id for j in await second.get_jobs([job.id])] == [job.id]
    finally:
        await second.close()


def test_sync_enqueue__many_threads_at_once__every_job_stored_once(tmp_path):
    app = Conveyor(f"sqlite:///{tmp_path}/threads.db")

    @app.task
    def noop(ctx: Context, n: int) -> int:
        return n

    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(lambda n: noop.enqueue(n), range(400)))
    keyed = [noop.enqueue(0, key="same") for _ in range(3)]

    assert len({h.id for h in handles}) == 400
    assert sorted(h.job.args[0] for h in handles) == list(range(400))
    assert len({h.id for h in keyed}) == 1
    assert all(app.get_job(h.id) is not None for h in handles[::40])
    app.close()


def test_sync_enqueue__unwritable_database__one_clear_error(tmp_path):
    app = Conveyor(f"sqlite:///{tmp_path}/missing/dir/x.db")

    @app.task
    def noop(ctx: Context) -> None: ...

    with pytest.raises(BackendUnavailable, match="SQLite"):
        noop.enqueue()
    app.close()


async def test_wait__own_heartbeats_and_progress__do_not_end_it__own_enqueue_does(tmp_path):
    """An idle worker's heartbeats commit on the file it waits on: they make no work, so
    they must not end its wait (each would cost a claim); a job its own process enqueues must."""
    import asyncio

    from conveyor.backends.base import WorkerInfo

    backend = SQLiteBackend(f"sqlite:///{tmp_path}/w.db")
    await backend.open()
    try:
        worker = WorkerInfo(id="w1", host="h", pid=1, queues=("default",), concurrency=1)
        await backend.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])
        [lease] = await backend.claim(["default"], 1, "w1", time.time())

        async def chatter() -> None:
            for _ in range(5):
                await asyncio.sleep(0.04)
                await backend.heartbeat(worker, {lease.job.id: lease.token}, time.time())
                await backend.set_progress(lease.job.id, lease.token, {"done": 1}, time.time())

        started = time.monotonic()
        await asyncio.gather(backend.wait_for_work(["default"], 0.4), chatter())
        assert time.monotonic() - started >= 0.35

        async def enqueue_soon() -> None:
            await asyncio.sleep(0.05)
            await backend.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])

        started = time.monotonic()
        await asyncio.gather(backend.wait_for_work(["default"], 2.0), enqueue_soon())
        assert time.monotonic() - started < 0.5
    finally:
        await backend.close()


async def test_wait_for_work__quiet_for_a_second__looks_every_10_ms_not_2(tmp_path, monkeypatch):
    """An idle worker looked at ``data_version`` every 2 ms (4-7 % of a core, all day long):
    once it has leased nothing for a second it looks every 10 ms; a lease makes it quick again."""
    import conveyor.backends.sqlite.backend as engine

    backend = SQLiteBackend(f"sqlite:///{tmp_path}/quiet.db")
    await backend.open()
    looks: list[str] = []
    backend._connection().set_trace_callback(lambda sql: looks.append(sql) if "data_version" in sql else None)

    async def looks_in(seconds: float) -> int:
        looks.clear()
        await backend.wait_for_work(["default"], seconds)
        return len(looks)

    try:
        monkeypatch.setattr(engine, "QUIET_AFTER", 0.3)
        busy = await looks_in(0.2)  # just opened: as after a lease
        time.sleep(0.3)
        quiet = await looks_in(0.2)
        assert busy >= 30 and quiet <= 22, (busy, quiet)
        job = Job(id=uuid7(), task="t", queue="default", created_at=time.time())
        await backend.enqueue([job])
        assert len(await backend.claim(["default"], 1, "w", time.time())) == 1
        assert await looks_in(0.2) >= 30
    finally:
        await backend.close()
