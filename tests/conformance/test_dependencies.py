"""Dependencies: waiting children, release on success, transitive cancel on failure."""

from __future__ import annotations

import time

import pytest

from conveyor.backends.base import Outcome
from conveyor.core.errors import InvalidTransition, ValidationError
from conveyor.core.job import Status


async def _finish(backend, job_id, status, now=None, **fields):
    [lease] = await backend.claim(["default"], 1, "w", time.time())
    assert lease.job.id == job_id
    assert await backend.finish([Outcome(job_id, lease.token, status, **fields)], now or time.time()) == [True]


async def test_enqueue__parent_pending__child_waits(backend, submit):
    parent = await submit()

    child = await submit(depends_on=[parent.id])

    assert child.status is Status.WAITING
    assert list(child.depends_on) == [parent.id]
    [lease] = await backend.claim(["default"], 5, "w", time.time())
    assert lease.job.id == parent.id


async def test_finish__last_parent_succeeds__child_becomes_queued(backend, submit, fetch):
    a = await submit()
    b = await submit()
    child = await submit(depends_on=[a.id, b.id])

    await _finish(backend, a.id, Status.SUCCEEDED)
    assert (await fetch(child.id)).status is Status.WAITING

    await _finish(backend, b.id, Status.SUCCEEDED)
    released = await fetch(child.id)
    assert released.status is Status.QUEUED
    [lease] = await backend.claim(["default"], 5, "w", time.time())
    assert lease.job.id == child.id


async def test_finish__parent_succeeds__child_with_future_time_is_scheduled(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id], scheduled_at=time.time() + 60)

    await _finish(backend, parent.id, Status.SUCCEEDED)

    assert (await fetch(child.id)).status is Status.SCHEDULED


async def test_enqueue__parent_already_succeeded__child_is_queued(backend, submit):
    parent = await submit()
    await _finish(backend, parent.id, Status.SUCCEEDED)

    child = await submit(depends_on=[parent.id])

    assert child.status is Status.QUEUED


async def test_enqueue__parent_already_failed__child_is_cancelled_naming_it(backend, submit):
    parent = await submit()
    await _finish(backend, parent.id, Status.FAILED, error={"type": "ValueError", "message": "x"})

    child = await submit(depends_on=[parent.id])

    assert child.status is Status.CANCELLED
    assert child.error is not None and child.error["type"] == "DependencyFailed"
    assert parent.id in child.error["message"] and "failed" in child.error["message"]


async def test_finish__parent_fails__dependents_cancelled_through_three_levels(backend, submit, fetch):
    root = await submit()
    child = await submit(depends_on=[root.id])
    grandchild = await submit(depends_on=[child.id])
    great = await submit(depends_on=[grandchild.id])

    await _finish(backend, root.id, Status.FAILED, error={"type": "ValueError", "message": "x"})

    for job, parent, ended in ((child, root, "failed"), (grandchild, child, "cancelled"),
                               (great, grandchild, "cancelled")):
        cancelled = await fetch(job.id)
        assert cancelled.status is Status.CANCELLED
        assert cancelled.error is not None and cancelled.error["type"] == "DependencyFailed"
        assert parent.id in cancelled.error["message"] and ended in cancelled.error["message"]
        assert cancelled.finished_at is not None


async def test_cancel__pending_parent__cascades_to_dependents(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id])

    await backend.cancel(parent.id, time.time())

    assert (await fetch(child.id)).status is Status.CANCELLED


async def test_sweep__parent_expires__dependents_cancelled(backend, submit, fetch):
    from conveyor.core.queues import QueueSettings

    await backend.save_queue_settings("default", QueueSettings(retention=60))
    parent = await submit()
    child = await submit(depends_on=[parent.id])

    await backend.sweep(time.time() + 61)

    cancelled = await fetch(child.id)
    assert cancelled.status is Status.CANCELLED
    assert cancelled.error is not None and "expired" in cancelled.error["message"]


async def test_purge__parent_purged__dependents_cancelled(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id])

    await backend.purge("default", time.time())

    assert (await fetch(child.id)).status is Status.CANCELLED


async def test_enqueue__parent_earlier_in_same_batch__child_waits_for_it(backend, new_job):
    parent = new_job()
    child = new_job(depends_on=[parent.id])

    results = await backend.enqueue([parent, child])

    assert [job.status for job, _ in results] == [Status.QUEUED, Status.WAITING]


# -- retry (requeue) of a dependent: it runs only after all its parents succeeded -------------
RETRYABLE = (Status.FAILED, Status.CANCELLED, Status.EXPIRED)
BOOM = {"type": "ValueError", "message": "boom"}


async def test_retry__parents_succeeded__dependent_is_queued(backend, submit, fetch):
    parent = await submit()
    await _finish(backend, parent.id, Status.SUCCEEDED)
    child = await submit(depends_on=[parent.id], scheduled_at=time.time() + 60)
    await backend.cancel(child.id, time.time())

    [retried] = await backend.requeue(None, [child.id], RETRYABLE, time.time())

    assert retried.status is Status.QUEUED
    [lease] = await backend.claim(["default"], 5, "w", time.time())
    assert lease.job.id == child.id


async def test_retry__parent_pending__dependent_waits_and_runs_after_it(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id])
    await backend.cancel(child.id, time.time())

    [retried] = await backend.requeue(None, [child.id], RETRYABLE, time.time())

    assert retried.status is Status.WAITING
    [lease] = await backend.claim(["default"], 5, "w", time.time())  # the parent only
    assert lease.job.id == parent.id
    await backend.finish([Outcome(parent.id, lease.token, Status.SUCCEEDED)], time.time())
    assert (await fetch(child.id)).status is Status.QUEUED


async def test_retry__parent_pending_then_fails__dependent_cancelled_again(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id])
    await backend.cancel(child.id, time.time())
    await backend.requeue(None, [child.id], RETRYABLE, time.time())

    await _finish(backend, parent.id, Status.FAILED, error=BOOM)

    cancelled = await fetch(child.id)
    assert cancelled.status is Status.CANCELLED
    assert cancelled.error is not None and parent.id in cancelled.error["message"]


async def test_retry__parent_failed__refused_naming_the_parent(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id])
    await _finish(backend, parent.id, Status.FAILED, error=BOOM)

    with pytest.raises(InvalidTransition) as refused:
        await backend.requeue(None, [child.id], RETRYABLE, time.time())

    assert parent.id in str(refused.value) and "failed" in str(refused.value)
    assert (await fetch(child.id)).status is Status.CANCELLED


async def test_retry__parent_retried_first__dependent_waits_for_its_new_run(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id])
    grandchild = await submit(depends_on=[child.id])
    await _finish(backend, parent.id, Status.FAILED, error=BOOM)

    await backend.requeue(None, [parent.id], RETRYABLE, time.time())
    [retried] = await backend.requeue(None, [child.id], RETRYABLE, time.time())
    [waits] = await backend.requeue(None, [grandchild.id], RETRYABLE, time.time())

    assert (retried.status, waits.status) == (Status.WAITING, Status.WAITING)
    await _finish(backend, parent.id, Status.SUCCEEDED)
    assert (await fetch(child.id)).status is Status.QUEUED
    await _finish(backend, child.id, Status.SUCCEEDED)
    assert (await fetch(grandchild.id)).status is Status.QUEUED


async def test_requeue_whole_queue__dependent_of_failed_parent_is_left_alone(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id])
    await _finish(backend, parent.id, Status.FAILED, error=BOOM)
    other = await submit(scheduled_at=time.time() + 60)
    await backend.cancel(other.id, time.time())

    requeued = await backend.requeue("default", None, [Status.CANCELLED], time.time())

    assert [j.id for j in requeued] == [other.id]
    assert (await fetch(child.id)).status is Status.CANCELLED


async def test_enqueue_batch__unknown_parent__error_points_at_that_job(backend, new_job):
    unknown = "01a24e04-0000-7000-8000-000000000000"

    with pytest.raises(ValidationError) as refused:
        await backend.enqueue([new_job(), new_job(depends_on=[unknown])])

    detail = f"depends_on: no job has id {unknown!r}"
    assert refused.value.errors == [{"pointer": "#/jobs/1/depends_on/0", "detail": detail}]
    assert str(refused.value) == detail
