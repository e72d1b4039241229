"""Redis engine: listings merged over per-queue indexes, and the lean enqueue/claim/finish paths."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from conveyor.backends.base import JobQuery, Outcome, WorkerInfo
from conveyor.backends.redis import RedisBackend
from conveyor.core.errors import BackendUnavailable
from conveyor.core.ids import uuid7
from conveyor.core.job import Job, Status
from tests.unavailable import unavailable


@pytest.fixture
async def rb() -> AsyncIterator[RedisBackend]:
    b = RedisBackend(f"redis://127.0.0.1:6379/0?prefix=rlayout_{uuid.uuid4().hex[:10]}")
    try:
        await b.open()
    except BackendUnavailable:
        unavailable("no redis at 127.0.0.1:6379")
    yield b
    await b.drop()
    await b.close()


def job(queue: str, task: str = "t") -> Job:
    return Job(id=uuid7(), task=task, queue=queue, created_at=time.time())


async def walk(rb: RedisBackend, query: JobQuery, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await rb.list_jobs(JobQuery(status=query.status, queue=query.queue, task=query.task,
                                           limit=limit, cursor=cursor))
        ids += [j.id for j in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("no end of the listing")


async def test_listings_across_queues_match_the_records(rb: RedisBackend) -> None:
    rnd = random.Random(7)
    queues = [f"q{i}" for i in range(7)]
    jobs = [job(rnd.choice(queues[:5]) if i % 10 else queues[0], rnd.choice(["a", "b"])) for i in range(240)]
    for start in range(0, len(jobs), 37):
        await rb.enqueue(jobs[start:start + 37])
    await rb.save_queue_settings("q6", (await rb.queue_settings("q6")))  # a known queue with no jobs
    leases = await rb.claim(queues, 60, "w", time.time())
    outcomes = [Outcome(lease.job.id, lease.token, rnd.choice([Status.SUCCEEDED, Status.FAILED]))
                for lease in leases[:40]]
    await rb.finish(outcomes, time.time())
    status = {j.id: j.status for j in await rb.get_jobs([j.id for j in jobs])}
    newest_first = sorted(jobs, key=lambda j: j.id, reverse=True)
    for limit in (1, 7, 50, 1000):
        assert await walk(rb, JobQuery(), limit) == [j.id for j in newest_first]
        for st in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.EXPIRED):
            want = [j.id for j in newest_first if status[j.id] == st]
            assert await walk(rb, JobQuery(status=st), limit) == want, (limit, st)
            want_b = [j.id for j in newest_first if status[j.id] == st and j.task == "b"]
            assert await walk(rb, JobQuery(status=st, task="b"), limit) == want_b
        for q in ("q0", "q3", "q6"):
            assert await walk(rb, JobQuery(queue=q), limit) == [j.id for j in newest_first if j.queue == q]
    counts = {q.name: q.counts for q in await rb.queues()}
    assert set(counts) == {j.queue for j in jobs} | {"q6"}
    for q in counts:
        expect: dict[str, int] = {}
        for j in jobs:
            if j.queue == q:
                expect[str(status[j.id])] = expect.get(str(status[j.id]), 0) + 1
        assert counts[q] == expect


async def test_a_batch_with_duplicate_ids_and_keys_stores_each_job_once(rb: RedisBackend) -> None:
    a = job("default")
    b = Job(id=uuid7(), task="t", idempotency_key="k1", created_at=time.time())
    c = Job(id=uuid7(), task="t", idempotency_key="k1", created_at=time.time())
    stored = await rb.enqueue([a, a, b, c])
    assert [created for _, created in stored] == [True, False, True, False]
    assert stored[1][0].id == a.id and stored[3][0].id == b.id
    assert (await rb.enqueue([a]))[0][0].status == Status.QUEUED


async def test_wake_list_stays_bounded(rb: RedisBackend) -> None:
    for _ in range(200):
        await rb.enqueue([job("default")])
    assert 64 <= await rb.r.llen(rb._qk("default", "wake")) <= 96  # type: ignore[misc]


async def test_finish_keeps_the_timeline_and_clears_the_lease(rb: RedisBackend) -> None:
    await rb.enqueue([job("default")])
    [lease] = await rb.claim(["default"], 1, "w1", time.time())
    assert lease.job.status == Status.RUNNING and lease.job.attempts[-1]["status"] == "running"
    assert (await rb.finish([Outcome(lease.job.id, lease.token, Status.SUCCEEDED, result={"x": 1})],
                            time.time())) == [True]
    [done] = await rb.get_jobs([lease.job.id])
    assert done.status == Status.SUCCEEDED and done.result == {"x": 1} and done.lease_token is None
    assert done.revision == lease.job.revision + 1 and done.attempts[-1]["status"] == "succeeded"


async def test_a_limited_job_popped_at_the_head_keeps_its_place(rb: RedisBackend) -> None:
    now = time.time()
    first = Job(id=uuid7(), task="t", created_at=now - 3, limit_key="k", concurrency_limit=1)
    second = Job(id=uuid7(), task="t", created_at=now - 2, limit_key="k", concurrency_limit=1)
    third = job("default")
    await rb.enqueue([first, second, third])
    leases = await rb.claim(["default"], 3, "w", time.time())
    assert [lease.job.id for lease in leases] == [first.id, third.id]
    ready = await rb.r.zrange(rb._qk("default", "ready"), 0, -1)  # type: ignore[misc]
    assert ready == [second.id]
    await rb.finish([Outcome(leases[0].job.id, leases[0].token, Status.SUCCEEDED)], time.time())
    [again] = await rb.claim(["default"], 5, "w", time.time())
    assert again.job.id == second.id


async def test_a_token_without_its_queue_still_finishes(rb: RedisBackend) -> None:
    await rb.enqueue([job("mail")])
    [lease] = await rb.claim(["mail"], 1, "w", time.time())
    assert lease.token.endswith("/mail")
    await rb.r.hset(rb._qk("mail", f"j:{lease.job.id}"), "lease_token", "older.1")  # type: ignore[misc]
    hb = await rb.heartbeat(WorkerInfo(id="w", host="h", pid=1, queues=("mail",), concurrency=1),
                            {lease.job.id: "older.1"}, time.time())
    assert not hb.lost
    assert await rb.set_progress(lease.job.id, "older.1", {"n": 1}, time.time())
    assert await rb.finish([Outcome(lease.job.id, lease.token, Status.SUCCEEDED)], time.time()) == [False]
    assert await rb.finish([Outcome(lease.job.id, "older.1", Status.SUCCEEDED)], time.time()) == [True]
