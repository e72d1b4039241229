"""Admin operations: cancel, requeue (retry and redrive), purge."""

from __future__ import annotations

import time

from conveyor.backends.base import Outcome
from conveyor.core.job import Status


async def test_cancel__queued_job__is_cancelled_at_once(backend, submit, fetch):
    job = await submit()
    now = time.time()

    cancelled = await backend.cancel(job.id, now)

    assert cancelled is not None and cancelled.status is Status.CANCELLED
    assert cancelled.finished_at == now
    assert (await fetch(job.id)).status is Status.CANCELLED
    assert await backend.claim(["default"], 1, "w", now) == []


async def test_cancel__scheduled_job__is_cancelled_at_once(backend, submit):
    job = await submit(scheduled_at=time.time() + 60)

    cancelled = await backend.cancel(job.id, time.time())

    assert cancelled is not None and cancelled.status is Status.CANCELLED


async def test_cancel__running_job__is_flagged_and_keeps_running(backend, submit, claim_one):
    job = await submit()
    lease = await claim_one()

    flagged = await backend.cancel(job.id, time.time())

    assert flagged is not None
    assert (flagged.status, flagged.cancel_requested) == (Status.RUNNING, True)
    assert await backend.finish([Outcome(job.id, lease.token, Status.CANCELLED)], time.time()) == [True]


async def test_cancel__finished_job__is_unchanged(backend, submit, claim_one):
    job = await submit()
    lease = await claim_one()
    await backend.finish([Outcome(job.id, lease.token, Status.SUCCEEDED, result=7)], time.time())

    after = await backend.cancel(job.id, time.time())

    assert after is not None and (after.status, after.result) == (Status.SUCCEEDED, 7)


async def test_cancel__unknown_job__returns_none(backend):
    assert await backend.cancel("01900000-0000-7000-8000-000000000000", time.time()) is None


async def test_requeue__failed_job__is_queued_with_attempts_reset(backend, submit, claim_one, fetch):
    job = await submit()
    lease = await claim_one()
    error = {"type": "ValueError", "message": "no", "traceback": None}
    await backend.finish([Outcome(job.id, lease.token, Status.FAILED, error=error, attempt=4)], time.time())

    [again] = await backend.requeue(None, [job.id], [Status.FAILED, Status.CANCELLED, Status.EXPIRED], time.time())

    assert again.id == job.id
    assert (again.status, again.attempt, again.deliveries) == (Status.QUEUED, 1, 0)
    assert (again.error, again.result, again.finished_at) == (None, None, None)
    assert (await claim_one()).job.id == job.id


async def test_requeue__redrive_queue__moves_only_its_dead_letters(backend, submit, new_job, fetch):
    await backend.enqueue([new_job(queue="media") for _ in range(2)] + [new_job(queue="mail")])
    leases = await backend.claim(["media", "mail"], 3, "w", time.time())
    await backend.finish([Outcome(lease.job.id, lease.token, Status.FAILED) for lease in leases], time.time())
    queued = await submit(queue="media")

    redriven = await backend.requeue("media", None, [Status.FAILED], time.time())

    assert sorted(j.id for j in redriven) == sorted(lease.job.id for lease in leases if lease.job.queue == "media")
    assert all(j.status is Status.QUEUED for j in redriven)
    mail = next(lease.job.id for lease in leases if lease.job.queue == "mail")
    assert (await fetch(mail)).status is Status.FAILED
    assert (await fetch(queued.id)).status is Status.QUEUED


async def test_requeue__status_not_asked__is_left_alone(backend, submit, claim_one, fetch):
    job = await submit()
    lease = await claim_one()
    await backend.finish([Outcome(job.id, lease.token, Status.SUCCEEDED)], time.time())

    assert await backend.requeue(None, [job.id], [Status.FAILED], time.time()) == []
    assert (await fetch(job.id)).status is Status.SUCCEEDED


async def test_purge__ready_jobs__become_cancelled(backend, submit, claim_one, fetch):
    running = await submit(queue="media")
    await claim_one("media")
    queued = [await submit(queue="media") for _ in range(3)]
    other = await submit(queue="mail")

    purged = await backend.purge("media", time.time())

    assert purged == 3
    assert {(await fetch(j.id)).status for j in queued} == {Status.CANCELLED}
    assert (await fetch(running.id)).status is Status.RUNNING
    assert (await fetch(other.id)).status is Status.QUEUED


async def test_save_queue_settings__named_fields__keep_a_concurrent_change_of_another(backend):
    stale = await backend.queue_settings("media")  # two admins read the same settings...
    await backend.save_queue_settings("media", stale.replace(paused=True), fields={"paused"})
    await backend.save_queue_settings("media", stale.replace(visibility_timeout=31), fields={"visibility_timeout"})

    stored = await backend.queue_settings("media")  # ...and both changes stand

    assert stored.paused is True and stored.visibility_timeout == 31
    assert stored.max_deliveries == stale.max_deliveries
