"""How the PostgreSQL engine talks to the server: durable one-round-trip enqueues, and claim/finish
statements whose plans stay cheap while a drain leaves dead index entries behind."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import ClientCursor

from conveyor.backends.base import Outcome
from conveyor.backends.postgres import PostgresBackend
from conveyor.core.ids import uuid7
from conveyor.core.job import Job, Status

DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _job(**fields: Any) -> Job:
    return Job(id=uuid7(), task="pg.noop", created_at=time.time(), **fields)


@pytest.fixture
async def pg() -> AsyncIterator[PostgresBackend]:
    backend = PostgresBackend(f"{DSN}?schema=pgstmt_{uuid.uuid4().hex[:12]}&pool_min=1&pool_max=1")
    await backend.open()
    yield backend
    await backend.drop()
    await backend.close()


async def _setting(pg: PostgresBackend) -> str:
    async def go(conn: psycopg.AsyncConnection[Any]) -> str:
        cur = await conn.execute("SELECT current_setting('synchronous_commit')")
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    return await pg._run(go)


async def test_enqueue_without_dependencies__commits_with_synchronous_commit_on(pg: PostgresBackend):
    # the insert statement of the one-round-trip path runs in a transaction with synchronous_commit on
    params = {"jobs": "[]", "channel": pg.channel, "notify": []}
    pg.q = {**pg.q, "insert_jobs": "SELECT current_setting('synchronous_commit'), current_setting('plan_cache_mode')"}

    rows = await pg._fetch_hot("insert_jobs", params, durable=True)

    assert rows == [("on", "force_generic_plan")]
    assert await _setting(pg) == "off"  # the pool session itself still commits asynchronously


async def test_claim__runs_with_generic_plans_and_asynchronous_commit(pg: PostgresBackend):
    pg.q = {**pg.q, "claim": "SELECT current_setting('synchronous_commit'), current_setting('plan_cache_mode')"}

    rows = await pg._fetch_hot("claim", {})

    assert rows == [("off", "force_generic_plan")]
    assert await _setting(pg) == "off"


async def test_enqueue_without_dependencies__is_committed_when_it_returns(pg: PostgresBackend):
    job = _job()

    [(stored, created)] = await pg.enqueue([job])

    assert created and stored.status is Status.QUEUED
    async with await psycopg.AsyncConnection.connect(DSN) as other:
        cur = await other.execute(f'SELECT status FROM "{pg.schema}".jobs WHERE id = %s', (job.id,))
        assert await cur.fetchall() == [("queued",)]


async def test_enqueue_without_dependencies__a_failed_insert_leaves_nothing_behind(pg: PostgresBackend):
    with pytest.raises(psycopg.DataError):
        await pg.enqueue([_job(), _job(priority=100_000)])  # smallint out of range

    async with await psycopg.AsyncConnection.connect(DSN) as other:
        cur = await other.execute(f'SELECT count(*) FROM "{pg.schema}".jobs')
        assert await cur.fetchall() == [(0,)]
    assert await _setting(pg) == "off"
    [(_, created)] = await pg.enqueue([_job()])
    assert created


async def test_enqueue_without_dependencies__a_known_idempotency_key_returns_the_stored_job(pg: PostgresBackend):
    [(first, _)] = await pg.enqueue([_job(idempotency_key="k1")])

    [(again, created)] = await pg.enqueue([_job(idempotency_key="k1")])

    assert not created and again.id == first.id


async def test_finish_and_heartbeat__find_their_rows_by_primary_key_after_a_drain(pg: PostgresBackend):
    # Every claim leaves a dead entry in jobs_lease_idx until vacuum: a plan through that index
    # would read all of them on every batch.
    await pg.enqueue([_job() for _ in range(600)])
    for _ in range(8):
        leases = await pg.claim(["default"], 64, "w1", time.time())
        await pg.finish([Outcome(job_id=lease.job.id, token=lease.token, status=Status.SUCCEEDED)
                         for lease in leases], time.time())
    leases = await pg.claim(["default"], 64, "w1", time.time())
    ids = [lease.job.id for lease in leases]
    outcomes = [{"job_id": lease.job.id, "token": lease.token, "status": "succeeded", "result": None,
                 "error": None, "scheduled_at": None, "attempt": None, "uncount": False} for lease in leases]
    finish = {"outcomes": json.dumps(outcomes), "ids": ids, "now": time.time(),
              "channel": pg.channel, "guard": True, "hb_cancel": '{"type": "x", "message": "y"}'}
    heartbeat = {"id": "w1", "host": "h", "pid": 1, "queues": '["default"]', "concurrency": 64, "running": "[]",
                 "started_at": time.time(), "now": time.time(), "ids": ids,
                 "tokens": [lease.token for lease in leases], "d_vt": 30.0}

    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        for name, params in (("finish", finish), ("heartbeat", heartbeat)):
            text = ClientCursor(conn).mogrify(pg.q[name], params)
            cur = await conn.execute("EXPLAIN " + text)
            plan = "\n".join(str(r[0]) for r in await cur.fetchall())
            assert "jobs_lease_idx" not in plan, plan
        await conn.rollback()

    applied = await pg.finish([Outcome(job_id=lease.job.id, token=lease.token, status=Status.SUCCEEDED)
                               for lease in leases], time.time())
    assert applied == [True] * len(leases)
