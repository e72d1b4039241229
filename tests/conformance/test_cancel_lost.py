"""Cancellation is stored: a cancelled running job whose worker is lost or hands it back ends cancelled.

A user cancels a running job (``cancel_requested``); if its worker dies before the next
heartbeat, the sweep of its expired lease must not put it back (or fail it at the delivery
limit): it ends ``cancelled``, with everything any cancelled job gets (dependents cancelled,
webhook owed, limit slot freed, timeline entry closed). Likewise a hand-back on shutdown.
"""

from __future__ import annotations

import time

from conveyor.backends.base import Outcome
from conveyor.core.job import Status
from conveyor.core.queues import QueueSettings

T0 = float(int(time.time())) + 60.0  # an explicit clock (claims pass ``now``), after every enqueue
VT = 30.0  # the default visibility timeout
LOST = {"type": "Cancelled", "message": "cancelled while its worker was lost", "traceback": None}
HOOK = "https://hooks.example.com/conveyor"


async def _claim_and_cancel(backend, job_id, now=T0):
    """Lease the job, then cancel it while it runs: it stays running, flagged."""
    [lease] = await backend.claim(["default"], 1, "worker-dead", now)
    assert lease.job.id == job_id
    flagged = await backend.cancel(job_id, now + 1)
    assert flagged is not None
    assert (flagged.status, flagged.cancel_requested) == (Status.RUNNING, True)
    return lease, flagged


async def test_sweep__cancel_requested_then_worker_lost__ends_cancelled(backend, submit, fetch):
    job = await submit()
    _, flagged = await _claim_and_cancel(backend, job.id)

    report = await backend.sweep(T0 + VT + 1)

    done = await fetch(job.id)
    assert done.status is Status.CANCELLED
    assert done.error == LOST
    assert done.finished_at == T0 + VT + 1
    assert (done.lease_token, done.lease_expires_at) == (None, None)
    assert done.revision > flagged.revision
    assert (report.requeued, report.dead) == (0, 0)
    assert await backend.claim(["default"], 5, "worker-2", T0 + VT + 2) == []
    assert (await fetch(job.id)).status is Status.CANCELLED


async def test_sweep__cancel_requested_at_delivery_limit__cancelled_not_failed(backend, submit, fetch):
    await backend.save_queue_settings("default", QueueSettings(max_deliveries=1, visibility_timeout=10))
    job = await submit()
    await _claim_and_cancel(backend, job.id)

    report = await backend.sweep(T0 + 11)

    done = await fetch(job.id)
    assert (done.status, done.error) == (Status.CANCELLED, LOST)
    assert report.dead == 0


async def test_sweep__cancel_requested_then_worker_lost__dependents_cancelled_naming_it(backend, submit, fetch):
    parent = await submit()
    child = await submit(depends_on=[parent.id])
    grandchild = await submit(depends_on=[child.id])
    await _claim_and_cancel(backend, parent.id)

    await backend.sweep(T0 + VT + 1)

    for job, named in ((child, parent), (grandchild, child)):
        cancelled = await fetch(job.id)
        assert cancelled.status is Status.CANCELLED
        assert cancelled.error is not None and cancelled.error["type"] == "DependencyFailed"
        assert named.id in cancelled.error["message"] and "cancelled" in cancelled.error["message"]
        assert cancelled.finished_at == T0 + VT + 1
    assert await backend.claim(["default"], 5, "worker-2", T0 + VT + 2) == []


async def test_sweep__cancel_requested_then_worker_lost__timeline_entry_closed_cancelled(backend, submit, fetch):
    job = await submit()
    await _claim_and_cancel(backend, job.id)

    await backend.sweep(T0 + VT + 1)

    [entry] = (await fetch(job.id)).attempts
    assert (entry["worker_id"], entry["status"], entry["finished_at"]) == ("worker-dead", "cancelled", T0 + VT + 1)


async def test_sweep__cancel_requested_then_worker_lost__owes_its_webhook(backend, submit):
    job = await submit(webhook=HOOK)
    await _claim_and_cancel(backend, job.id)

    await backend.sweep(T0 + VT + 1)
    due = await backend.due_webhooks(T0 + VT + 1, 10, 30)

    assert [(j.id, j.status, attempts) for j, attempts in due] == [(job.id, Status.CANCELLED, 0)]


async def test_sweep__cancel_requested_then_worker_lost__frees_the_limit_slot(backend, submit, fetch):
    limits = {"limit_key": "api", "concurrency_limit": 1}
    first = await submit("api.call", **limits)
    second = await submit("api.call", **limits)
    await _claim_and_cancel(backend, first.id)
    assert await backend.claim(["default"], 5, "worker-2", T0 + 2) == []

    await backend.sweep(T0 + VT + 1)

    [lease] = await backend.claim(["default"], 5, "worker-2", T0 + VT + 2)
    assert lease.job.id == second.id
    assert (await fetch(first.id)).status is Status.CANCELLED


async def test_sweep__cancel_requested_but_lease_live__left_running(backend, submit, fetch):
    job = await submit()
    await _claim_and_cancel(backend, job.id)

    await backend.sweep(T0 + VT - 1)

    still = await fetch(job.id)
    assert (still.status, still.cancel_requested) == (Status.RUNNING, True)


async def test_finish__handed_back_after_cancel__ends_cancelled(backend, submit, fetch):
    parent = await submit(webhook=HOOK)
    child = await submit(depends_on=[parent.id])
    lease, flagged = await _claim_and_cancel(backend, parent.id)

    applied = await backend.finish([Outcome(parent.id, lease.token, Status.QUEUED, uncount_delivery=True)], T0 + 2)

    assert applied == [True]
    done = await fetch(parent.id)
    assert done.status is Status.CANCELLED
    assert done.error is not None and done.error["type"] == "Cancelled"
    assert done.finished_at == T0 + 2
    assert (done.lease_token, done.lease_expires_at) == (None, None)
    assert done.revision > flagged.revision
    assert [e["status"] for e in done.attempts] == ["cancelled"]
    assert await backend.claim(["default"], 5, "worker-2", T0 + 3) == []
    cancelled = await fetch(child.id)
    assert cancelled.status is Status.CANCELLED
    assert cancelled.error is not None and parent.id in cancelled.error["message"]
    due = await backend.due_webhooks(T0 + 2, 10, 30)
    assert [(j.id, j.status) for j, _ in due] == [(parent.id, Status.CANCELLED)]


async def test_finish__handed_back_after_cancel__frees_the_limit_slot(backend, submit):
    limits = {"limit_key": "api", "concurrency_limit": 1}
    first = await submit("api.call", **limits)
    second = await submit("api.call", **limits)
    lease, _ = await _claim_and_cancel(backend, first.id)

    await backend.finish([Outcome(first.id, lease.token, Status.QUEUED)], T0 + 2)

    [again] = await backend.claim(["default"], 5, "worker-2", T0 + 3)
    assert again.job.id == second.id
