"""Housekeeping: retention, result_ttl, the workers registry, bounded sweeps."""

from __future__ import annotations

import time

from conveyor.backends.base import Outcome, WorkerInfo
from conveyor.core.job import Status
from conveyor.core.queues import QueueSettings


async def test_sweep__ready_job_past_retention__expires(backend, submit, fetch):
    await backend.save_queue_settings("default", QueueSettings(retention=60))
    job = await submit()
    now = time.time()

    assert (await backend.sweep(now + 30)).expired == 0
    report = await backend.sweep(now + 61)

    assert report.expired == 1
    expired = await fetch(job.id)
    assert expired.status is Status.EXPIRED
    assert expired.finished_at == now + 61
    assert await backend.claim(["default"], 1, "w", now + 62) == []


async def test_sweep__job_put_back__retention_counts_from_the_put_back(backend, submit, claim_one, fetch):
    await backend.save_queue_settings("default", QueueSettings(retention=60))
    job = await submit()
    now = time.time()
    await claim_one(now=now)
    assert (await backend.sweep(now + 31)).requeued == 1  # its lease ended at now + 30

    assert (await backend.sweep(now + 90)).expired == 0  # ready 90 s ago, but put back 59 s ago
    assert (await fetch(job.id)).status is Status.QUEUED
    assert (await backend.sweep(now + 92)).expired == 1


async def test_sweep__delayed_job__retention_counts_from_its_time(backend, submit, fetch):
    await backend.save_queue_settings("default", QueueSettings(retention=60))
    now = time.time()
    job = await submit(scheduled_at=now + 100)

    assert (await backend.sweep(now + 90)).expired == 0
    assert (await fetch(job.id)).status is Status.SCHEDULED


async def test_sweep__finished_past_result_ttl__record_deleted(backend, submit, claim_one, fetch):
    await backend.save_queue_settings("default", QueueSettings(result_ttl=60))
    job = await submit()
    now = time.time()
    lease = await claim_one(now=now)
    await backend.finish([Outcome(job.id, lease.token, Status.SUCCEEDED)], now)

    assert (await backend.sweep(now + 30)).deleted == 0
    assert (await fetch(job.id)).status is Status.SUCCEEDED
    report = await backend.sweep(now + 61)

    assert report.deleted == 1
    assert await backend.get_jobs([job.id]) == []


async def test_sweep__limit__bounds_each_batch(backend, new_job):
    await backend.save_queue_settings("default", QueueSettings(retention=60))
    await backend.enqueue([new_job() for _ in range(5)])
    now = time.time()

    first = await backend.sweep(now + 61, limit=2)
    second = await backend.sweep(now + 61, limit=10)

    assert (first.expired, second.expired) == (2, 3)


async def test_sweep__limit__put_back_jobs_at_the_head_do_not_hide_expired_ones(backend, new_job, fetch):
    # jobs put back keep their place at the head of the line with a fresh retention: a batch
    # that only looks at the head would find nothing to expire, sweep after sweep
    await backend.save_queue_settings("default", QueueSettings(retention=60))
    now = time.time()
    jobs = [new_job(created_at=now + i / 1000) for i in range(3)]
    await backend.enqueue(jobs)
    assert len(await backend.claim(["default"], 2, "w", now)) == 2
    assert (await backend.sweep(now + 31)).requeued == 2  # put back at now + 31

    assert (await backend.sweep(now + 62, limit=2)).expired == 1

    assert (await fetch(jobs[2].id)).status is Status.EXPIRED
    assert {(await fetch(j.id)).status for j in jobs[:2]} == {Status.QUEUED}


async def test_workers__silent_worker__is_dropped(backend):
    now = time.time()
    await backend.heartbeat(WorkerInfo("alive", "h", 1, ("default",), 4), {}, now)
    await backend.heartbeat(WorkerInfo("gone", "h", 2, ("default",), 4), {}, now - 20)

    assert [w.id for w in await backend.workers(now)] == ["alive"]
    report = await backend.sweep(now)

    assert report.workers_dropped == 1
    assert [w.id for w in await backend.workers(now)] == ["alive"]


async def test_unregister_worker__clean_stop__leaves_the_registry(backend):
    now = time.time()
    await backend.heartbeat(WorkerInfo("w1", "h", 1, ("default",), 4), {}, now)

    await backend.unregister_worker("w1")

    assert await backend.workers(now) == []
