"""Global limits: a limited job waits in its queue without holding up the jobs behind it."""

from __future__ import annotations

import time

import pytest

from conveyor.backends.base import Outcome
from conveyor.core.job import Status
from conveyor.core.limits import MAX_LIMIT
from conveyor.core.queues import QueueSettings

T0 = 0.0  #: an explicit clock (claims pass ``now``), after every enqueue: set for each test


@pytest.fixture(autouse=True)
def _clock_ahead() -> None:
    """T0 a minute ahead of each test's start. Rate windows count a start at the later of the
    claim's ``now`` and the engine's clock, so a T0 fixed at import had fallen behind the clock
    by the time a long suite ran these tests: their windows then moved with the real clock."""
    global T0
    T0 = float(int(time.time())) + 60.0


def limited(key: str = "api", concurrency: int | None = 2, rate: tuple[int, float] | None = None) -> dict:
    return {"limit_key": key, "concurrency_limit": concurrency, "rate_limit": rate, "created_at": T0}


async def running_of(backend, ids) -> int:
    return sum(j.status is Status.RUNNING for j in await backend.get_jobs(ids))


async def test_claim__concurrency_limit_2_of_10_ready__leases_2_and_the_jobs_behind(backend, submit):
    capped = [await submit("api.call", **limited()) for _ in range(10)]
    other = [await submit("other.task", created_at=T0) for _ in range(3)]

    leases = await backend.claim(["default"], 8, "w1", T0)

    got = [lease.job.id for lease in leases]
    assert got == [capped[0].id, capped[1].id, *(j.id for j in other)]
    assert await backend.claim(["default"], 8, "w2", T0 + 1) == []
    assert await running_of(backend, [j.id for j in capped]) == 2
    queued = await backend.get_jobs([j.id for j in capped[2:]])
    assert {j.status for j in queued} == {Status.QUEUED}


async def test_claim__one_at_a_time_from_many_workers__never_exceeds_the_limit(backend, submit):
    capped = [await submit("api.call", **limited()) for _ in range(10)]

    for n in range(6):
        await backend.claim(["default"], 1, f"w{n}", T0 + n)

    assert await running_of(backend, [j.id for j in capped]) == 2


async def test_finish__any_outcome__frees_the_slot(backend, submit):
    for _ in range(6):
        await submit("api.call", **limited())
    a, b = await backend.claim(["default"], 5, "w1", T0)

    await backend.finish([Outcome(a.job.id, a.token, Status.SUCCEEDED, result=1)], T0 + 1)
    [c] = await backend.claim(["default"], 5, "w1", T0 + 2)
    await backend.finish([Outcome(b.job.id, b.token, Status.RETRYING, error={"type": "E", "message": "m"},
                                  scheduled_at=T0 + 100, attempt=2)], T0 + 3)
    [d] = await backend.claim(["default"], 5, "w1", T0 + 4)
    await backend.finish([Outcome(c.job.id, c.token, Status.QUEUED, uncount_delivery=True)], T0 + 5)
    [e] = await backend.claim(["default"], 5, "w1", T0 + 6)

    assert len({a.job.id, b.job.id, c.job.id, d.job.id}) == 4  # each stop let exactly one more start
    assert e.job.status is Status.RUNNING
    assert await backend.claim(["default"], 5, "w1", T0 + 7) == []


async def test_sweep__expired_lease__frees_the_slot(backend, submit):
    await backend.save_queue_settings("default", QueueSettings(visibility_timeout=10))
    for _ in range(3):
        await submit("api.call", **limited(concurrency=1))
    await backend.claim(["default"], 5, "w1", T0)
    assert await backend.claim(["default"], 5, "w2", T0 + 5) == []

    await backend.sweep(T0 + 11)

    assert len(await backend.claim(["default"], 5, "w2", T0 + 12)) == 1


async def test_cancel__running_job_that_stops__frees_the_slot(backend, submit):
    first = await submit("api.call", **limited(concurrency=1))
    await submit("api.call", **limited(concurrency=1))
    [lease] = await backend.claim(["default"], 5, "w1", T0)
    assert lease.job.id == first.id

    await backend.cancel(first.id, T0 + 1)
    assert await backend.claim(["default"], 5, "w2", T0 + 2) == []  # still running until it stops
    await backend.finish([Outcome(first.id, lease.token, Status.CANCELLED)], T0 + 3)

    assert len(await backend.claim(["default"], 5, "w2", T0 + 4)) == 1


async def test_cancel__queued_limited_job__does_not_take_a_slot(backend, submit):
    waiting = [await submit("api.call", **limited(concurrency=1)) for _ in range(2)]
    await backend.cancel(waiting[0].id, T0)

    [lease] = await backend.claim(["default"], 5, "w1", T0 + 1)

    assert lease.job.id == waiting[1].id


async def test_claim__per_key_limits__are_independent(backend, submit):
    for customer in ("acme", "globex"):
        for _ in range(4):
            await submit("api.call", **limited(key=f"customer:{customer}", concurrency=1))

    leases = await backend.claim(["default"], 10, "w1", T0)

    assert sorted(lease.job.limit_key for lease in leases) == ["customer:acme", "customer:globex"]


async def test_claim__limit_is_shared_across_queues(backend, submit):
    await submit("api.call", queue="a", **limited(concurrency=1))
    await submit("api.call", queue="b", **limited(concurrency=1))

    leases = await backend.claim(["a", "b"], 10, "w1", T0)
    assert len(leases) == 1
    assert await backend.claim(["b"], 10, "w2", T0) == []


async def test_claim__rate_limit__n_starts_per_window_then_the_next_window(backend, submit):
    jobs = [await submit("api.call", **limited(concurrency=None, rate=(3, 1.0))) for _ in range(8)]

    first = await backend.claim(["default"], 10, "w1", T0)
    assert len(first) == 3
    assert await backend.claim(["default"], 10, "w1", T0 + 0.5) == []
    for lease in first:  # finishing does not give rate back: starts count, not running jobs
        await backend.finish([Outcome(lease.job.id, lease.token, Status.SUCCEEDED)], T0 + 0.6)
    assert await backend.claim(["default"], 10, "w1", T0 + 0.9) == []

    second = await backend.claim(["default"], 10, "w2", T0 + 1.01)

    assert len(second) == 3
    assert [lease.job.id for lease in first + second] == [j.id for j in jobs[:6]]


async def test_claim__rate_limit__a_claim_run_after_its_now__counts_its_starts_from_when_it_ran(backend, submit):
    """A claim can run later than its ``now``: redis-py sends it again after a dropped connection
    with the arguments of its first send (0.7 s old after three retries); a claim may wait for a
    lock. Its starts were stamped at that ``now``, so they left the window early: a chaos soak saw
    8 starts of a 5/s task within 0.9 s, right after a 4 s cut of Redis."""
    for _ in range(6):
        await submit("api.call", **{**limited(concurrency=None, rate=(3, 1.0)), "created_at": time.time()})
    first = await backend.claim(["default"], 10, "w1", time.time() - 0.7)
    assert len(first) == 3
    time.sleep(0.4)  # the first three started 0.4 s ago, whatever their claim said

    assert await backend.claim(["default"], 10, "w2", time.time()) == []


async def test_claim__rate_and_concurrency__both_hold(backend, submit):
    for _ in range(6):
        await submit("api.call", **limited(concurrency=1, rate=(5, 60.0)))

    [a] = await backend.claim(["default"], 10, "w1", T0)
    await backend.finish([Outcome(a.job.id, a.token, Status.SUCCEEDED)], T0 + 1)
    [b] = await backend.claim(["default"], 10, "w1", T0 + 2)

    assert a.job.id != b.job.id


async def test_claim__unlimited_jobs_of_a_full_key__keep_priority_order(backend, submit):
    urgent = await submit("other.task", priority=9, created_at=T0)
    for _ in range(3):
        await submit("api.call", priority=5, **limited(concurrency=1))
    low = await submit("other.task", priority=0, created_at=T0)

    leases = await backend.claim(["default"], 10, "w1", time.time())

    got = [lease.job.id for lease in leases]
    assert len(got) == 3
    assert got[0] == urgent.id
    assert got[-1] == low.id


async def test_claim__1500_jobs_of_one_full_key_ahead__the_unlimited_job_behind_starts(backend, new_job):
    [(first, _)] = await backend.enqueue([new_job("api.call", **limited(concurrency=1))])
    [lease] = await backend.claim(["default"], 1, "w1", T0)
    await backend.enqueue([new_job("api.call", **limited(concurrency=1)) for _ in range(1500)])
    [(free, _)] = await backend.enqueue([new_job("other.task", created_at=T0)])

    leases = await backend.claim(["default"], 4, "w2", T0 + 1)

    assert lease.job.id == first.id
    assert [lease.job.id for lease in leases] == [free.id]


async def test_claim__800_full_keys_ahead__the_unlimited_job_behind_starts(backend, new_job):
    keys = [f"tenant-{n}" for n in range(800)]
    await backend.enqueue([new_job("api.call", **limited(key, concurrency=1)) for key in keys])
    assert len(await backend.claim(["default"], 800, "w1", T0)) == 800  # every key at its limit now
    await backend.enqueue([new_job("api.call", **limited(key, concurrency=1)) for key in keys])
    [(free, _)] = await backend.enqueue([new_job("other.task", created_at=T0)])

    leases = await backend.claim(["default"], 4, "w2", T0 + 1)

    assert [lease.job.id for lease in leases] == [free.id]


async def test_wait__after_a_rate_limited_job_left__an_idle_wait_waits(backend, submit):
    """A claim that left a rate-limited job waiting remembered when its window frees; once no
    such job was left (another worker took it, or it was cancelled), an idle SQLite worker's
    waits returned at once, for ever: a loop at full CPU that never ran its signal handlers."""
    now = time.time()
    first, second = [await submit("api.call", **{**limited(concurrency=None, rate=(1, 0.2)), "created_at": now})
                     for _ in range(2)]
    [lease] = await backend.claim(["default"], 10, "w1", time.time())
    assert lease.job.id == first.id
    await backend.finish([Outcome(first.id, lease.token, Status.SUCCEEDED)], time.time())
    await backend.cancel(second.id, time.time())
    time.sleep(0.3)  # the rate window has passed
    assert await backend.claim(["default"], 10, "w1", time.time()) == []

    # the enqueues, the finish and the cancel may each have left a wake-up: a wait for each
    # returns at once, and the claim after it (as a worker's) finds nothing; then a wait must wait
    waits = []
    while len(waits) < 20 and (not waits or waits[-1] < 0.25):
        started = time.monotonic()
        await backend.wait_for_work(["default"], 0.3)
        waits.append(time.monotonic() - started)
        assert await backend.claim(["default"], 10, "w1", time.time()) == []

    assert waits[-1] >= 0.25, waits


async def test_claim__the_largest_limits_a_task_may_set__stored_and_claimed(backend, submit):
    """``@app.task`` takes limits up to ``MAX_LIMIT``: every engine stores and enforces them
    (2**31 had made every enqueue fail on PostgreSQL's integer column, 2**63 on SQLite)."""
    job = await submit("api.call", **limited(concurrency=MAX_LIMIT, rate=(MAX_LIMIT, 3600.0)))

    [lease] = await backend.claim(["default"], 10, "w1", T0)

    assert lease.job.id == job.id
    assert (lease.job.concurrency_limit, lease.job.rate_limit) == (MAX_LIMIT, (MAX_LIMIT, 3600.0))
