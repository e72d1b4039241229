"""Leasing: claim order, pause, delay, lease expiry, delivery limit, fencing, heartbeats, waking."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import pytest

from conveyor.backends.base import Outcome, WorkerInfo
from conveyor.core import rules
from conveyor.core.job import Status
from conveyor.core.queues import QueueSettings


async def test_claim__ready_job__is_leased_with_a_token(backend, submit):
    job = await submit()
    now = time.time()

    [lease] = await backend.claim(["default"], 5, "worker-1", now)

    assert lease.job.id == job.id
    assert lease.job.status is Status.RUNNING
    assert lease.token and lease.job.lease_token == lease.token
    assert lease.job.worker_id == "worker-1"
    assert lease.job.deliveries == 1
    assert lease.job.started_at == now
    assert lease.job.lease_expires_at == now + QueueSettings().visibility_timeout
    assert await backend.claim(["default"], 5, "worker-2", now) == []


async def test_claim__priorities__highest_first_then_fifo(backend, submit):
    low = await submit(priority=0)
    high_1 = await submit(priority=9)
    mid = await submit(priority=5)
    high_2 = await submit(priority=9)

    leases = await backend.claim(["default"], 10, "worker-1", time.time())

    assert [lease.job.id for lease in leases] == [high_1.id, high_2.id, mid.id, low.id]


async def test_claim__limit__claims_one_per_call_in_fifo_order(backend, submit):
    jobs = [await submit() for _ in range(3)]

    got = [(await backend.claim(["default"], 1, "w", time.time()))[0].job.id for _ in range(3)]

    assert got == [j.id for j in jobs]


async def test_claim__many_at_once__listed_in_line_order(backend, submit, claim_one):
    retried = await submit()
    now = time.time()
    lease = await claim_one(now=now)
    await backend.finish([Outcome(retried.id, lease.token, Status.RETRYING, scheduled_at=now + 10, attempt=2)], now)
    queued = await submit()  # ready before the retry comes due, though created after it

    leases = await backend.claim(["default"], 2, "w", now + 11)

    assert [lease.job.id for lease in leases] == [queued.id, retried.id]


async def test_claim__only_named_queues__are_served(backend, submit):
    await submit(queue="other")
    mine = await submit(queue="mine")

    leases = await backend.claim(["mine", "absent"], 10, "worker-1", time.time())

    assert [lease.job.id for lease in leases] == [mine.id]


async def test_claim__paused_queue__hands_out_nothing_until_resumed(backend, submit):
    job = await submit(queue="media")
    await backend.save_queue_settings("media", QueueSettings(paused=True))

    assert await backend.claim(["media"], 1, "worker-1", time.time()) == []

    await backend.save_queue_settings("media", QueueSettings(paused=False))
    [lease] = await backend.claim(["media"], 1, "worker-1", time.time())
    assert lease.job.id == job.id


async def test_claim__delayed_job__not_before_its_time(backend, submit):
    now = time.time()
    job = await submit(scheduled_at=now + 60)

    assert await backend.claim(["default"], 1, "worker-1", now + 59) == []

    [lease] = await backend.claim(["default"], 1, "worker-1", now + 61)
    assert lease.job.id == job.id


async def test_claim__expired_lease__redelivers_after_sweep(backend, submit, claim_one, fetch):
    job = await submit()
    now = time.time()
    first = await claim_one(now=now)

    report = await backend.sweep(now + 31)
    second = await claim_one(now=now + 31, worker="worker-2")

    assert report.requeued == 1
    assert second.job.id == job.id
    assert second.token != first.token
    assert second.job.deliveries == 2
    assert (await fetch(job.id)).worker_id == "worker-2"


async def test_sweep__expired_lease__job_keeps_its_place_in_line(backend, submit, claim_one):
    first, second, third = [await submit() for _ in range(3)]
    now = time.time()
    assert (await claim_one(now=now)).job.id == first.id  # its worker dies: the lease runs out

    assert (await backend.sweep(now + 31)).requeued == 1
    got = [(await claim_one(now=now + 31)).job.id for _ in range(3)]

    assert got == [first.id, second.id, third.id]


async def test_sweep__live_lease__is_left_alone(backend, submit, claim_one, fetch):
    job = await submit()
    now = time.time()
    await claim_one(now=now)

    report = await backend.sweep(now + 29)

    assert report.requeued == 0
    assert (await fetch(job.id)).status is Status.RUNNING


async def test_sweep__deliveries_reach_max__job_fails_with_delivery_limit(backend, submit, claim_one, fetch):
    await backend.save_queue_settings("default", QueueSettings(max_deliveries=2, visibility_timeout=10))
    job = await submit()
    now = time.time()
    await claim_one(now=now)
    await backend.sweep(now + 11)
    await claim_one(now=now + 11)

    report = await backend.sweep(now + 22)

    assert report.dead == 1
    failed = await fetch(job.id)
    assert failed.status is Status.FAILED
    assert failed.error is not None and failed.error["type"] == "DeliveryLimitExceeded"
    assert failed.finished_at == now + 22
    assert await backend.claim(["default"], 1, "w", now + 23) == []


async def test_finish__stale_token__refused_after_lease_passed_on(backend, submit, claim_one, fetch):
    job = await submit()
    now = time.time()
    old = await claim_one(now=now)
    await backend.sweep(now + 31)
    new = await claim_one(now=now + 31, worker="worker-2")

    stale = await backend.finish([Outcome(job.id, old.token, Status.SUCCEEDED, result="old")], now + 32)
    progress = await backend.set_progress(job.id, old.token, {"fraction": 0.9}, now + 32)
    reply = await backend.heartbeat(WorkerInfo("worker-1", "host", 1, ("default",), 1), {job.id: old.token},
                                    now + 32)

    assert stale == [False]
    assert progress is False
    assert job.id in reply.lost
    assert (await fetch(job.id)).status is Status.RUNNING
    assert await backend.finish([Outcome(job.id, new.token, Status.SUCCEEDED, result="new")], now + 33) == [True]
    assert (await fetch(job.id)).result == "new"


async def test_finish__succeeded__records_result_and_ends_lease(backend, submit, claim_one, fetch):
    job = await submit()
    lease = await claim_one()
    now = time.time()

    assert await backend.finish([Outcome(job.id, lease.token, Status.SUCCEEDED, result={"ok": 1})], now) == [True]

    done = await fetch(job.id)
    assert done.status is Status.SUCCEEDED
    assert done.result == {"ok": 1}
    assert done.finished_at == now
    assert done.lease_token is None
    assert await backend.finish([Outcome(job.id, lease.token, Status.FAILED)], now) == [False]


async def test_finish__many_outcomes__each_applied_or_refused(backend, submit, new_job, fetch):
    await backend.enqueue([new_job() for _ in range(3)])
    a, b, c = await backend.claim(["default"], 3, "w", time.time())
    now = time.time()
    error = {"type": "ValueError", "message": "bad", "traceback": None}

    applied = await backend.finish([
        Outcome(a.job.id, a.token, Status.SUCCEEDED, result=1),
        Outcome(b.job.id, "not-the-token", Status.SUCCEEDED),
        Outcome(c.job.id, c.token, Status.FAILED, error=error),
    ], now)

    assert applied == [True, False, True]
    assert (await fetch(a.job.id)).status is Status.SUCCEEDED
    assert (await fetch(b.job.id)).status is Status.RUNNING
    failed = await fetch(c.job.id)
    assert (failed.status, failed.error) == (Status.FAILED, error)


async def test_finish__thousands_of_outcomes_in_one_call__records_and_counts_agree(backend, new_job, fetch):
    # a worker with a large pool reports this many at once; engines that batch index writes
    # must split them (Redis: Lua's unpack limit) and still file every job under its status
    n = 4100
    await backend.enqueue([new_job() for _ in range(n + 20)])
    leases = await backend.claim(["default"], n + 20, "w", time.time())
    assert len(leases) == n + 20
    now = time.time()
    error = {"type": "ValueError", "message": "bad", "traceback": None}
    outcomes = [Outcome(lease.job.id, lease.token, Status.SUCCEEDED, result=i) for i, lease in enumerate(leases[:n])]
    outcomes += [Outcome(lease.job.id, lease.token, Status.FAILED, error=error) for lease in leases[n:n + 10]]
    outcomes += [Outcome(lease.job.id, lease.token, Status.RETRYING, scheduled_at=now + 60, attempt=2)
                 for lease in leases[n + 10:]]

    assert await backend.finish(outcomes, now) == [True] * (n + 20)

    [info] = await backend.queues(["default"])
    assert {k: v for k, v in info.counts.items() if v} == {"succeeded": n, "failed": 10, "retrying": 10}
    assert (await fetch(leases[n - 1].job.id)).result == n - 1
    assert (await fetch(leases[n].job.id)).status is Status.FAILED
    assert await backend.claim(["default"], 10, "w", now) == []  # nothing left ready, nothing leased twice


async def test_finish__retrying__reclaimable_at_its_time_with_next_attempt(backend, submit, claim_one, fetch):
    job = await submit()
    now = time.time()
    lease = await claim_one(now=now)
    error = {"type": "ValueError", "message": "flaky", "traceback": "..."}

    await backend.finish([Outcome(job.id, lease.token, Status.RETRYING, error=error, scheduled_at=now + 10,
                                  attempt=2)], now)

    retrying = await fetch(job.id)
    assert (retrying.status, retrying.attempt, retrying.scheduled_at) == (Status.RETRYING, 2, now + 10)
    assert retrying.error == error
    assert await backend.claim(["default"], 1, "w", now + 9) == []
    again = await claim_one(now=now + 11)
    assert (again.job.id, again.job.attempt, again.job.deliveries) == (job.id, 2, 2)


async def test_finish__handed_back_uncounted__is_queued_without_using_a_delivery(backend, submit, claim_one,
                                                                                fetch):
    job = await submit()
    lease = await claim_one()

    await backend.finish([Outcome(job.id, lease.token, Status.QUEUED, uncount_delivery=True)], time.time())

    back = await fetch(job.id)
    assert (back.status, back.deliveries, back.lease_token) == (Status.QUEUED, 0, None)
    assert (await claim_one()).job.id == job.id


@pytest.mark.parametrize("put_back", [rules.handed_back, partial(rules.delivery_lost, max_deliveries=5,
                                                                     reason="its process died")],
                         ids=["handed_back_at_a_stop", "process_died"])
async def test_finish__put_back_without_an_outcome__job_keeps_its_place_in_line(backend, submit, claim_one,
                                                                               put_back):
    first, second, third = [await submit() for _ in range(3)]
    lease = await claim_one()

    assert await backend.finish([put_back(lease.job, lease.token)], time.time()) == [True]
    got = [(await claim_one()).job.id for _ in range(3)]

    assert got == [first.id, second.id, third.id]


async def test_finish_and_claim__outcomes_applied_then_next_jobs_leased(backend, new_job, fetch):
    await backend.enqueue([new_job() for _ in range(4)])
    a, b = await backend.claim(["default"], 2, "w", time.time())
    now = time.time()

    applied, leases = await backend.finish_and_claim([
        Outcome(a.job.id, a.token, Status.SUCCEEDED, result="a"),
        Outcome(b.job.id, "not-the-token", Status.SUCCEEDED),
    ], ["default"], 5, "w", now)

    assert applied == [True, False]
    assert (await fetch(a.job.id)).result == "a"
    assert (await fetch(b.job.id)).status is Status.RUNNING
    assert len(leases) == 2
    assert {lease.job.id for lease in leases}.isdisjoint({a.job.id, b.job.id})
    assert all(lease.job.status is Status.RUNNING and lease.token for lease in leases)


async def test_finish_and_claim__handed_back_job__is_leased_again_in_the_same_call(backend, submit, claim_one):
    job = await submit()
    lease = await claim_one()

    applied, leases = await backend.finish_and_claim(
        [Outcome(job.id, lease.token, Status.QUEUED, uncount_delivery=True)], ["default"], 1, "w2", time.time())

    assert applied == [True]
    assert [(again.job.id, again.job.worker_id) for again in leases] == [(job.id, "w2")]


async def test_heartbeat__held_lease__is_extended_and_worker_registered(backend, submit, claim_one, fetch):
    job = await submit()
    now = time.time()
    lease = await claim_one(now=now)
    worker = WorkerInfo("worker-1", "host-a", 4242, ("default",), 8, running=(job.id,), started_at=now)

    reply = await backend.heartbeat(worker, {job.id: lease.token}, now + 20)

    assert reply.lost == frozenset() and reply.cancel_requested == frozenset()
    assert (await fetch(job.id)).lease_expires_at == now + 20 + QueueSettings().visibility_timeout
    assert (await backend.sweep(now + 35)).requeued == 0
    [info] = await backend.workers(now + 20)
    assert (info.id, info.host, info.pid, info.queues, info.running) == (
        "worker-1", "host-a", 4242, ("default",), (job.id,))


async def test_heartbeat__cancel_requested__is_reported(backend, submit, claim_one):
    job = await submit()
    lease = await claim_one()
    await backend.cancel(job.id, time.time())

    reply = await backend.heartbeat(WorkerInfo("w", "h", 1, ("default",), 1), {job.id: lease.token}, time.time())

    assert reply.cancel_requested == frozenset({job.id})
    assert reply.lost == frozenset()


async def test_wait_for_work__another_process_enqueues__wakes_within_milliseconds(backend, open_backend,
                                                                                   new_job):
    other = await open_backend()
    waiter = asyncio.create_task(backend.wait_for_work(["default"], 5.0))
    await asyncio.sleep(0.05)

    started = time.monotonic()
    await other.enqueue([new_job()])
    await asyncio.wait_for(waiter, 2.0)

    assert time.monotonic() - started < 0.5


async def test_wait_and_claim__job_arrives_during_the_wait__leased_to_the_waiter_at_once(backend, open_backend,
                                                                                         new_job, fetch):
    other = await open_backend()
    waiter = asyncio.create_task(backend.wait_and_claim(["default"], 5.0, 4, "waiter"))
    await asyncio.sleep(0.05)

    started = time.monotonic()
    [(job, _)] = await other.enqueue([new_job()])
    leases = await asyncio.wait_for(waiter, 2.0)
    if leases is None:  # an engine that only wakes the waiter: it claims next
        leases = await backend.claim(["default"], 4, "waiter", time.time())

    assert time.monotonic() - started < 0.5
    assert [lease.job.id for lease in leases] == [job.id]
    stored = await fetch(job.id)
    assert (stored.status, stored.worker_id, stored.lease_token) == (Status.RUNNING, "waiter", leases[0].token)
    assert job.created_at <= stored.started_at <= time.time()


async def test_wait_and_claim__nothing_arrives__returns_after_the_timeout_with_nothing(backend):
    started = time.monotonic()
    leases = await backend.wait_and_claim(["default"], 0.2, 4, "waiter")

    assert not leases
    assert 0.1 <= time.monotonic() - started < 2.0


async def test_wait_for_work__nothing_happens__returns_after_timeout(backend):
    started = time.monotonic()

    await backend.wait_for_work(["default"], 0.05)

    assert 0.04 <= time.monotonic() - started < 1.0
