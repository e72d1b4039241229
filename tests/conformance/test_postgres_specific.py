"""What only the PostgreSQL engine promises: transactional enqueue, schema isolation, versioned
migrations, LISTEN/NOTIFY wake-ups, safe concurrency and clear outage errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from conveyor import serialization
from conveyor.backends.base import Outcome
from conveyor.backends.postgres import PostgresBackend, statements
from conveyor.backends.postgres.statements import migrations
from conveyor.core.errors import BackendUnavailable, ConfigurationError
from conveyor.core.ids import uuid7
from conveyor.core.job import Job, Status
from conveyor.core.queues import QueueSettings

DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _job(**fields: object) -> Job:
    return Job(id=uuid7(), task="pg.echo", created_at=time.time(), **fields)  # type: ignore[arg-type]


def test_url__schema_is_stripped_from_the_connection_string():
    backend = PostgresBackend(f"{DSN}?schema=abc&connect_timeout=3")

    assert backend.schema == "abc"
    assert "schema" not in backend.conninfo
    assert "connect_timeout=3" in backend.conninfo
    assert backend.channel == "conveyor_abc"


def test_url__unsafe_schema_name__is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        PostgresBackend(f"{DSN}?schema=a;drop")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("schema=", "the PostgreSQL URL: option 'schema' has no value"),  # was: the schema 'conveyor'
        ("schema=a&schema=b", "the PostgreSQL URL: option 'schema' is given twice"),  # was: 'b'
        ("schema=abc&sslmode=", "the PostgreSQL URL: option 'sslmode' has no value"),  # was: a failed connection
        ("schema=abc&pool_max=0", "invalid pool_max '0' in the PostgreSQL URL: a whole number, at least 1"),
        ("schema=abc&pool_min=4&pool_max=2", "invalid pool_max '2' in the PostgreSQL URL: a whole number, at least 4"),
        ("schema=abc&pool_timeout=nan", "invalid pool_timeout 'nan' in the PostgreSQL URL: seconds, more than 0"),
        ("schema=abc&connect_timeout=soon", "invalid connect_timeout 'soon' in the PostgreSQL URL: a whole number"),
    ],
)
def test_url__option_empty_repeated_or_out_of_range__configuration_error_naming_it(query, expected):
    with pytest.raises(ConfigurationError) as caught:
        PostgresBackend(f"{DSN}?{query}")
    assert expected in str(caught.value)


async def test_open__records_every_migration_in_schema_version(pg):
    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        cur = await conn.execute(f'SELECT version FROM "{pg.schema}".schema_version ORDER BY version')
        versions = [r[0] for r in await cur.fetchall()]

    assert versions == [v for v, _, _ in migrations()]


async def test_open__twice_at_once__migrates_once(pg):
    others = [PostgresBackend(f"{DSN}?schema={pg.schema}") for _ in range(3)]
    await asyncio.gather(*(o.open() for o in others))
    for other in others:
        await other.close()

    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        cur = await conn.execute(f'SELECT count(*) FROM "{pg.schema}".schema_version')
        assert (await cur.fetchone())[0] == len(migrations())


async def test_open__schema_a_newer_release_migrated__refused_saying_upgrade(pg):
    # An old worker left running through an upgrade must not run its SQL against the new columns.
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(f'INSERT INTO "{pg.schema}".schema_version (version, name) VALUES (%s, %s)',
                           (9999, "9999_future.sql"))
    older = PostgresBackend(f"{DSN}?schema={pg.schema}")
    with pytest.raises(ConfigurationError) as caught:
        await older.open()
    await older.close()
    assert f"has schema version 9999, newer than this Conveyor knows ({migrations()[-1][0]}): upgrade Conveyor" in str(
        caught.value)


async def test_open__schema_of_version_4__upgrades_in_place__json_is_stored_as_given_from_then_on(monkeypatch):
    # Version 4 kept arguments and results as jsonb, which rewrites numbers: 1e16 as the integer
    # 10000000000000000, -0.0 as 0.0. The upgrade keeps the jobs stored before it as they are.
    url = f"{DSN}?schema=pgonly_{uuid.uuid4().hex[:12]}"
    every = migrations()
    monkeypatch.setattr(statements, "migrations", lambda: [m for m in every if m[0] <= 4])
    before, after = _job(args=[1e16, -0.0]), _job(args=[1e16, -0.0])
    old = PostgresBackend(url)
    await old.open()
    await old.enqueue([before])
    await old.close()
    monkeypatch.undo()

    backend = PostgresBackend(url)
    await backend.open()
    try:
        await backend.enqueue([after])
        leases = await backend.claim(["default"], 2, "w", time.time())
        await backend.finish([Outcome(lease.job.id, lease.token, Status.SUCCEEDED, result={"z": 1e16, "a": -0.0})
                              for lease in leases], time.time())

        kept, new = await backend.get_jobs([before.id, after.id])
        assert serialization.dumps(kept.args) == "[10000000000000000,0.0]"  # as version 4 stored them
        assert serialization.dumps(new.args) == "[1e+16,-0.0]"
        assert [serialization.dumps(j.result) for j in (kept, new)] == ['{"z":1e+16,"a":-0.0}'] * 2
    finally:
        await backend.drop()
        await backend.close()


async def test_enqueue_in__rollback__no_job(pg):
    job = _job()
    async with await psycopg.AsyncConnection.connect(DSN) as conn, conn.transaction(force_rollback=True):
        [(stored, created)] = await pg.enqueue_in(conn, [job])
        assert created and stored.status is Status.QUEUED

    assert await pg.get_jobs([job.id]) == []
    assert await pg.claim(["default"], 10, "w", time.time()) == []


async def test_enqueue_in__commit__job_is_claimable_and_wakes_waiters(pg):
    job = _job()
    await pg.wait_for_work(["default"], 0)
    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        async with conn.transaction():
            await pg.enqueue_in(conn, [job])
            # Not visible (and no wake-up) before the caller commits.
            assert await pg.get_jobs([job.id]) == []
            started = time.monotonic()
            await pg.wait_for_work(["default"], 0.05)
            assert time.monotonic() - started >= 0.04
        started = time.monotonic()
        await pg.wait_for_work(["default"], 2.0)
        assert time.monotonic() - started < 1.0

    [lease] = await pg.claim(["default"], 10, "w", time.time())
    assert lease.job.id == job.id


async def test_enqueue_in__any_search_path__uses_the_backend_schema(pg):
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute("SET search_path TO pg_catalog")
        [(stored, created)] = await pg.enqueue_in(conn, [_job()])

    assert created
    assert [j.id for j in await pg.get_jobs([stored.id])] == [stored.id]


async def test_schemas__are_isolated(pg):
    other = PostgresBackend(f"{DSN}?schema=pgspec_{uuid.uuid4().hex[:12]}")
    await other.open()
    try:
        await pg.enqueue([_job()])
        assert await other.claim(["default"], 10, "w", time.time()) == []
    finally:
        await other.drop()
        await other.close()


async def test_wait_for_work__notify__wakes_within_a_few_milliseconds(pg):
    await pg.wait_for_work(["default"], 0)
    delays = []
    for _ in range(20):
        async def enqueue_later() -> float:
            await asyncio.sleep(0.01)
            await pg.enqueue([_job()])
            return time.perf_counter()

        task = asyncio.create_task(enqueue_later())
        await pg.wait_for_work(["default"], 2.0)
        woke = time.perf_counter()
        delays.append(woke - await task if task.done() else 0.0)
        await pg.claim(["default"], 10, "w", time.time())
    delays.sort()
    assert delays[len(delays) // 2] < 0.02


async def test_wait_for_work__other_queue__does_not_wake(pg):
    await pg.wait_for_work(["default"], 0)
    await pg.claim(["default"], 1, "w", time.time())
    await pg.enqueue([_job(queue="other")])
    started = time.monotonic()

    await pg.wait_for_work(["default"], 0.1)

    assert time.monotonic() - started >= 0.09


@pytest.fixture
async def pg_other(pg: PostgresBackend) -> AsyncIterator[PostgresBackend]:
    """Another process's view of ``pg``'s schema."""
    other = PostgresBackend(f"{DSN}?schema={pg.schema}")
    await other.open()
    yield other
    await other.close()


async def test_wait_for_work__delayed_job_enqueued_during_the_wait__starts_when_due(
        pg, pg_other, idle_until_leased):
    async def enqueue_soon() -> Job:
        await asyncio.sleep(0.1)  # the worker waits by now
        [(job, _)] = await pg_other.enqueue([_job(scheduled_at=time.time() + 0.3)])
        return job

    enqueuing = asyncio.create_task(enqueue_soon())
    lease, claims = await idle_until_leased(pg)
    job = await enqueuing

    assert lease.job.id == job.id
    assert job.scheduled_at <= lease.job.started_at < job.scheduled_at + 0.15
    assert claims <= 3


async def test_wait_for_work__retry_decided_elsewhere_during_the_wait__starts_when_due(
        pg, pg_other, idle_until_leased):
    [(job, _)] = await pg.enqueue([_job()])
    [lease] = await pg_other.claim(["default"], 1, "other-worker", time.time())
    due = time.time() + 0.4

    async def retry_soon() -> None:
        await asyncio.sleep(0.1)
        await pg_other.finish([Outcome(job.id, lease.token, Status.RETRYING, error={"type": "Boom"},
                                       scheduled_at=due, attempt=2)], time.time())

    retrying = asyncio.create_task(retry_soon())
    retry, claims = await idle_until_leased(pg)
    await retrying

    assert retry.job.id == job.id and retry.job.attempt == 2
    assert due <= retry.job.started_at < due + 0.15
    assert claims <= 3


async def test_wait_for_work__delayed_child_released_during_the_wait__starts_when_due(
        pg, pg_other, idle_until_leased):
    parent = _job(queue="parents")
    child = _job(depends_on=[parent.id], scheduled_at=time.time() + 0.4)
    await pg.enqueue([parent, child])
    [lease] = await pg_other.claim(["parents"], 1, "other-worker", time.time())

    async def succeed_soon() -> None:
        await asyncio.sleep(0.1)
        await pg_other.finish([Outcome(parent.id, lease.token, Status.SUCCEEDED)], time.time())

    finishing = asyncio.create_task(succeed_soon())
    released, claims = await idle_until_leased(pg)
    await finishing

    assert released.job.id == child.id
    assert child.scheduled_at <= released.job.started_at < child.scheduled_at + 0.15
    assert claims <= 3


async def test_wait_for_work__delayed_job_of_a_paused_queue__does_not_end_the_wait(pg):
    await pg.save_queue_settings("default", QueueSettings(paused=True))
    await pg.enqueue([_job(scheduled_at=time.time() + 0.1)])
    await pg.claim(["default"], 1, "w", time.time())
    started = time.monotonic()

    await pg.wait_for_work(["default"], 0.5)

    assert time.monotonic() - started >= 0.45


async def test_wait_for_work__idle_turns__read_the_due_time_once(pg, monkeypatch):
    """An idle worker waits every 0.25 s; the due time it knows holds until one is announced."""
    await pg.enqueue([_job(scheduled_at=time.time() + 60)])
    reads = []
    fetch = pg._fetch

    async def counting_fetch(name, params, conn=None):
        reads.append(name)
        return await fetch(name, params, conn)

    monkeypatch.setattr(pg, "_fetch", counting_fetch)
    for _ in range(3):
        await pg.claim(["default"], 4, "w", time.time())
        await pg.wait_for_work(["default"], 0.05)

    assert reads.count("next_due") == 1


async def test_idempotency__concurrent_inserts_of_one_key__create_one_job(pg):
    backends = [PostgresBackend(f"{DSN}?schema={pg.schema}") for _ in range(4)]
    await asyncio.gather(*(b.open() for b in backends))
    try:
        results = await asyncio.gather(*(b.enqueue([_job(idempotency_key="same")]) for b in backends * 3))
    finally:
        for b in backends:
            await b.close()

    flat = [r for batch in results for r in batch]
    assert sum(created for _, created in flat) == 1
    assert len({job.id for job, _ in flat}) == 1


async def test_claim__concurrent_claimers__never_share_a_job(pg):
    await pg.enqueue([_job() for _ in range(300)])
    backends = [PostgresBackend(f"{DSN}?schema={pg.schema}") for _ in range(3)]
    await asyncio.gather(*(b.open() for b in backends))
    claimed: list[str] = []

    async def drain(b: PostgresBackend) -> None:
        while leases := await b.claim(["default"], 7, "w", time.time()):
            claimed.extend(lease.job.id for lease in leases)

    try:
        await asyncio.gather(*(drain(b) for b in backends))
    finally:
        for b in backends:
            await b.close()

    assert len(claimed) == 300 == len(set(claimed))


async def test_finish__two_parents_succeed_at_once__child_is_released(pg):
    for _ in range(5):
        a, b = _job(), _job()
        child = _job(depends_on=[a.id, b.id])
        await pg.enqueue([a, b, child])
        leases = await pg.claim(["default"], 2, "w", time.time())
        other = PostgresBackend(f"{DSN}?schema={pg.schema}")
        await other.open()
        try:
            await asyncio.gather(
                pg.finish([Outcome(leases[0].job.id, leases[0].token, Status.SUCCEEDED)], time.time()),
                other.finish([Outcome(leases[1].job.id, leases[1].token, Status.SUCCEEDED)], time.time()),
            )
        finally:
            await other.close()
        [stored] = await pg.get_jobs([child.id])
        assert stored.status is Status.QUEUED
        [lease] = await pg.claim(["default"], 1, "w", time.time())
        await pg.finish([Outcome(lease.job.id, lease.token, Status.SUCCEEDED)], time.time())


async def test_claim__one_statement_for_many_jobs(pg):
    await pg.enqueue([_job(priority=p % 10) for p in range(50)])

    leases = await pg.claim(["default"], 50, "w", time.time())

    assert len(leases) == 50
    assert [lease.job.priority for lease in leases] == sorted((p % 10 for p in range(50)), reverse=True)
    assert len({lease.token for lease in leases}) == 50


async def test_unreachable_server__is_backend_unavailable_with_one_line():
    backend = PostgresBackend("postgresql://postgres@127.0.0.1:1/test?schema=x&pool_timeout=1&connect_timeout=1")
    started = time.monotonic()

    with pytest.raises(BackendUnavailable) as caught:
        await backend.open()

    assert time.monotonic() - started < 5
    assert "\n" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


async def test_lost_connections__fail_clearly_then_recover(pg):
    await pg.enqueue([_job()])
    await pg.claim(["default"], 1, "w", time.time())  # a worker's backend: it listens from its first claim
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (pg.application_name,))
        assert (await cur.fetchone())[0] >= 2  # the pool and the listener
    outcomes = []
    for _ in range(5):
        try:
            await pg.ping()
            outcomes.append("ok")
        except BackendUnavailable as exc:
            assert "\n" not in str(exc)
            outcomes.append("down")
    assert outcomes[-1] == "ok"
    # The listener reconnects too: a new job wakes a waiter again.
    await asyncio.sleep(0.3)
    await pg.claim(["default"], 1, "w", time.time())
    task = asyncio.create_task(pg.wait_for_work(["default"], 5.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await pg.enqueue([_job()])
    await task
    assert time.monotonic() - started < 1.0


async def test_concurrent_enqueues_share_statements__a_record_the_engine_refuses_fails_only_its_caller(pg):
    sent: list[int] = []
    fetch_hot = pg._fetch_hot

    async def counted(name, params, **kwargs):
        if name == "insert_jobs":
            sent.append(params["jobs"].count('"id":'))
        return await fetch_hot(name, params, **kwargs)

    pg._fetch_hot = counted
    good = [_job(args=[i]) for i in range(40)]
    bad = _job(idempotency_key="nul\x00key")  # past the app's checks: PostgreSQL refuses it in a statement
    results = await asyncio.gather(*(pg.enqueue([j]) for j in good[:20]), pg.enqueue([bad]),
                                   *(pg.enqueue([j]) for j in good[20:]), return_exceptions=True)

    assert isinstance(results[20], psycopg.errors.UntranslatableCharacter)
    assert [r[0][0].id for i, r in enumerate(results) if i != 20] == [j.id for j in good]  # type: ignore[index]
    assert len(await pg.get_jobs([j.id for j in good])) == 40
    # the first caller went alone; the 40 that came meanwhile went together, then, refused, each alone
    assert sent == [1, 40] + [1] * 40


def test_sync_enqueues_of_many_threads__share_statements__each_thread_gets_its_own_outcome(monkeypatch):
    """A threaded web app's ``enqueue`` calls: each thread has a loop and a pool of its own, so
    before, each paid its own durable commit and the threads fought over the GIL."""
    import threading

    from conveyor import Conveyor

    sent: list[int] = []
    fetch_hot = PostgresBackend._fetch_hot

    async def counted(self, name, params, **kwargs):
        if name == "insert_jobs":
            sent.append(params["jobs"].count('"id":'))
        return await fetch_hot(self, name, params, **kwargs)

    monkeypatch.setattr(PostgresBackend, "_fetch_hot", counted)
    app = Conveyor(f"{DSN}?schema=pgthreads_{uuid.uuid4().hex[:12]}")

    @app.task()
    def noop(ctx, n: int) -> None:
        pass

    outcomes: dict[int, list[object]] = {}
    start = threading.Barrier(8)

    def submit(t: int) -> None:
        start.wait(5)
        mine: list[object] = []
        for i in range(30):
            try:
                depends = [str(uuid7())] if (t, i) == (3, 10) else []  # one thread's mistake: a parent nobody made
                key = "same-order" if i == 20 else None
                mine.append(noop.enqueue(t * 100 + i, depends_on=depends, key=key))
            except Exception as exc:
                mine.append(exc)
        outcomes[t] = mine

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
        mistakes = [o for t in outcomes for o in outcomes[t] if isinstance(o, Exception)]
        assert [type(m).__name__ for m in mistakes] == ["ValidationError"]  # only that call failed
        handles = {t: [o for o in outcomes[t] if not isinstance(o, Exception)] for t in outcomes}
        keyed = {h[20].id for t, h in handles.items() if t != 3} | {handles[3][19].id}
        assert len(keyed) == 1  # one key, one job, whichever thread came first
        others = [h.id for t in handles for h in handles[t] if h.id not in keyed]  # type: ignore[attr-defined]
        assert len(set(others)) == len(others) == 8 * 29 - 1
        assert sum(sent) == 8 * 30 - 1 and len(sent) < 8 * 30 - 1  # threads that met shared a statement
        jobs = [app.get_job(i) for i in others]
        assert all(j is not None and j.status == "queued" for j in jobs)
    finally:
        async def drop() -> None:
            await (await app.backend()).drop()

        app.portal.call(drop())
        app.close()


async def test_a_process_that_only_enqueues_listens_to_nothing__its_first_claim_starts_listening(pg):
    """A web app's every thread has a backend of its own: each listening connection took one of
    the server's max_connections and was sent every job's notification."""
    async def listening() -> int:
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
            cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                     "AND query LIKE 'LISTEN%%'", (pg.application_name,))
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    for i in range(5):
        await pg.enqueue([_job(args=[i])])
    assert await listening() == 0

    leases = await pg.claim(["default"], 1, "w", time.time())
    assert len(leases) == 1
    assert await listening() == 1
    waiting = asyncio.ensure_future(pg.wait_for_work(["other"], 5.0))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await pg_enqueue_elsewhere(pg.schema, _job(queue="other"))
    await asyncio.wait_for(waiting, 2.0)
    assert time.monotonic() - t0 < 1.0  # woken by the notification, not the timeout


async def pg_enqueue_elsewhere(schema: str, job: Job) -> None:
    other = PostgresBackend(f"{DSN}?schema={schema}")
    await other.open()
    try:
        await other.enqueue([job])
    finally:
        await other.close()
