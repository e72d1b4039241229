"""Dependencies under concurrency: a child enqueued while its parent's failure cascades ends
cancelled, never ``waiting`` forever."""

from __future__ import annotations

import asyncio
import time

import psycopg

from conveyor.backends.base import Outcome
from conveyor.core.ids import uuid7
from conveyor.core.job import Job, Status

DSN = "postgresql://postgres@127.0.0.1:5432/test"
FAILED = {"type": "ValueError", "message": "boom"}


async def test_enqueue_during_cascade__grandchildren_end_cancelled(open_backend, new_job):
    """Two processes: one fails parents, the other enqueues grandchildren at the same moment."""
    failer, enqueuer = await open_backend(), await open_backend()
    trios = []
    for _ in range(15):
        parent = new_job()
        child = new_job(depends_on=[parent.id])
        await failer.enqueue([parent, child])
        trios.append((parent, child))
    leases = {lease.job.id: lease for lease in await failer.claim(["default"], 15, "w", time.time())}
    assert set(leases) == {p.id for p, _ in trios}

    async def fail(parent: Job) -> None:
        lease = leases[parent.id]
        await failer.finish([Outcome(parent.id, lease.token, Status.FAILED, error=FAILED)], time.time())

    async def add_grandchild(child: Job) -> Job:
        [(grandchild, _)] = await enqueuer.enqueue([new_job(depends_on=[child.id])])
        return grandchild

    outcomes = await asyncio.wait_for(asyncio.gather(
        *(f for p, c in trios for f in (fail(p), add_grandchild(c)))), 60)
    grandchildren = [g for g in outcomes if g is not None]

    stored = await failer.get_jobs([g.id for g in grandchildren] + [c.id for _, c in trios])
    assert {str(j.status) for j in stored} == {"cancelled"}


async def _blocked_on_a_lock(schema: str) -> None:
    """Returns once a session of this installation waits for a row lock (at most 10 s)."""
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        for _ in range(200):
            cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                     "AND wait_event_type = 'Lock'", (f"conveyor:{schema}",))
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the cascade never waited for the enqueue's lock")


async def test_postgres__grandchild_committed_while_cascade_waits__is_cancelled(pg):
    """The interleaving that left grandchildren waiting: the enqueue holds the child's row lock
    (its parent check) when the cascade starts, and commits the grandchild while it waits."""
    parent = Job(id=uuid7(), task="t", created_at=time.time())
    child = Job(id=uuid7(), task="t", created_at=time.time(), depends_on=[parent.id])
    await pg.enqueue([parent, child])
    [lease] = await pg.claim(["default"], 1, "w", time.time())
    grandchild = Job(id=uuid7(), task="t", created_at=time.time(), depends_on=[child.id])

    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        async with conn.transaction():
            [(stored, _)] = await pg.enqueue_in(conn, [grandchild])
            assert stored.status is Status.WAITING
            failing = asyncio.ensure_future(
                pg.finish([Outcome(parent.id, lease.token, Status.FAILED, error=FAILED)], time.time()))
            await _blocked_on_a_lock(pg.schema)
        assert await asyncio.wait_for(failing, 10) == [True]

    jobs = {j.id: j for j in await pg.get_jobs([child.id, grandchild.id])}
    assert jobs[child.id].status is Status.CANCELLED
    assert jobs[grandchild.id].status is Status.CANCELLED
    assert jobs[grandchild.id].error is not None and child.id in jobs[grandchild.id].error["message"]
