"""The webhook outbox: a job with a webhook that turns terminal owes one delivery."""

from __future__ import annotations

import time

from conveyor.backends.base import Outcome
from conveyor.core.job import Status
from conveyor.core.queues import QueueSettings

HOOK = "https://hooks.example.com/conveyor"


async def _succeed(backend, job_id, now):
    [lease] = await backend.claim(["default"], 1, "w", now)
    await backend.finish([Outcome(job_id, lease.token, Status.SUCCEEDED, result="done")], now)


async def test_due_webhooks__terminal_job_with_webhook__is_due_once(backend, submit):
    job = await submit(webhook=HOOK)
    plain = await submit()
    now = time.time()
    assert await backend.due_webhooks(now, 10, 30) == []

    await _succeed(backend, job.id, now)
    await _succeed(backend, plain.id, now)
    due = await backend.due_webhooks(now, 10, 30)

    assert [(j.id, j.status, attempts) for j, attempts in due] == [(job.id, Status.SUCCEEDED, 0)]
    assert due[0][0].result == "done"
    assert await backend.due_webhooks(now + 1, 10, 30) == [], "hidden from other senders while leased"


async def test_due_webhooks__sender_died__comes_due_again_after_lease(backend, submit):
    job = await submit(webhook=HOOK)
    now = time.time()
    await _succeed(backend, job.id, now)
    await backend.due_webhooks(now, 10, 30)

    again = await backend.due_webhooks(now + 31, 10, 30)

    assert [j.id for j, _ in again] == [job.id]


async def test_webhook_attempted__failed_then_delivered__counts_and_stops(backend, submit):
    job = await submit(webhook=HOOK)
    now = time.time()
    await _succeed(backend, job.id, now)
    await backend.due_webhooks(now, 10, 30)

    await backend.webhook_attempted(job.id, delivered=False, next_at=now + 5)
    assert await backend.due_webhooks(now + 4, 10, 30) == []
    [(_, attempts)] = await backend.due_webhooks(now + 5, 10, 30)
    assert attempts == 1

    await backend.webhook_attempted(job.id, delivered=True, next_at=None)
    assert await backend.due_webhooks(now + 1000, 10, 30) == []


async def test_webhook_attempted__gave_up__is_not_due_again(backend, submit):
    job = await submit(webhook=HOOK)
    now = time.time()
    await _succeed(backend, job.id, now)
    await backend.due_webhooks(now, 10, 30)

    await backend.webhook_attempted(job.id, delivered=False, next_at=None)

    assert await backend.due_webhooks(now + 1000, 10, 30) == []


async def test_due_webhooks__cancelled_pending_job__owes_a_delivery(backend, submit):
    job = await submit(webhook=HOOK)

    await backend.cancel(job.id, time.time())
    due = await backend.due_webhooks(time.time(), 10, 30)

    assert [(j.id, j.status) for j, _ in due] == [(job.id, Status.CANCELLED)]


async def test_sweep__result_ttl_passed_while_webhook_owed__record_kept_until_delivered(backend, submit):
    await backend.save_queue_settings("default", QueueSettings(result_ttl=60))
    job = await submit(webhook=HOOK)
    now = time.time()
    await _succeed(backend, job.id, now)

    assert (await backend.sweep(now + 61)).deleted == 0, "the outbox still owes its delivery"
    [(due, _)] = await backend.due_webhooks(now + 61, 10, 30)
    assert due.id == job.id and due.result == "done"
    await backend.webhook_attempted(job.id, delivered=True, next_at=None)

    assert (await backend.sweep(now + 200)).deleted == 1
    assert await backend.get_jobs([job.id]) == []


async def test_requeue__failed_job_owing_a_webhook__owes_one_only_when_it_ends_again(backend, submit):
    job = await submit(webhook=HOOK)
    now = time.time()
    [lease] = await backend.claim(["default"], 1, "w", now)
    await backend.finish([Outcome(job.id, lease.token, Status.FAILED, error={"type": "E", "message": "x"})], now)

    await backend.requeue(None, [job.id], [Status.FAILED], now + 1)

    assert await backend.due_webhooks(now + 2, 10, 30) == [], "no delivery while the job is queued again"
    await _succeed(backend, job.id, now + 3)
    due = await backend.due_webhooks(now + 3, 10, 30)
    assert [(j.id, j.status, attempts) for j, attempts in due] == [(job.id, Status.SUCCEEDED, 0)]
