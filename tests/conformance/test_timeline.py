"""The job timeline: every delivery with its worker, start, end, outcome and error."""

from __future__ import annotations

import time

from conveyor.backends.base import Outcome
from conveyor.core import rules
from conveyor.core.job import Status
from conveyor.core.queues import QueueSettings
from conveyor.serialization import to_rfc3339

T0 = float(int(time.time())) + 60.0  # an explicit clock (claims pass ``now``), after every enqueue
BOOM = {"type": "ValueError", "message": "boom", "traceback": "Traceback ..."}


async def test_timeline__success__one_entry_with_worker_and_times(backend, submit, fetch):
    job = await submit()
    [lease] = await backend.claim(["default"], 1, "worker-a", T0)
    assert [a["status"] for a in lease.job.attempts] == ["running"]

    await backend.finish([Outcome(job.id, lease.token, Status.SUCCEEDED, result=42)], T0 + 2.5)

    [entry] = (await fetch(job.id)).to_json()["attempts"]
    assert entry == {"attempt": 1, "worker_id": "worker-a", "started_at": to_rfc3339(T0),
                     "finished_at": to_rfc3339(T0 + 2.5), "status": "succeeded", "error": None}


async def test_timeline__retry_then_success__shows_why_it_ran_twice(backend, submit, fetch):
    job = await submit()
    [first] = await backend.claim(["default"], 1, "worker-a", T0)
    await backend.finish([Outcome(job.id, first.token, Status.RETRYING, error=BOOM, scheduled_at=T0 + 1,
                                  attempt=2)], T0 + 0.5)
    [second] = await backend.claim(["default"], 1, "worker-b", T0 + 1)
    await backend.finish([Outcome(job.id, second.token, Status.SUCCEEDED)], T0 + 1.5)

    attempts = (await fetch(job.id)).to_json()["attempts"]

    assert [(a["attempt"], a["worker_id"], a["status"]) for a in attempts] == [
        (1, "worker-a", "retrying"), (2, "worker-b", "succeeded")]
    assert attempts[0]["error"] == {"type": "ValueError", "message": "boom"}
    assert attempts[0]["finished_at"] == to_rfc3339(T0 + 0.5)
    assert attempts[1]["error"] is None


async def test_timeline__lost_lease__shows_lost_with_the_sweep_time(backend, submit, fetch):
    await backend.save_queue_settings("default", QueueSettings(visibility_timeout=5))
    job = await submit()
    await backend.claim(["default"], 1, "worker-dead", T0)
    await backend.sweep(T0 + 6)
    [again] = await backend.claim(["default"], 1, "worker-b", T0 + 7)
    await backend.finish([Outcome(job.id, again.token, Status.SUCCEEDED)], T0 + 8)

    attempts = (await fetch(job.id)).to_json()["attempts"]

    assert [(a["worker_id"], a["status"]) for a in attempts] == [("worker-dead", "lost"), ("worker-b", "succeeded")]
    assert attempts[0]["finished_at"] == to_rfc3339(T0 + 6)
    assert attempts[0]["error"]["type"] == "LeaseExpired"


async def test_timeline__lost_too_often__ends_failed_with_every_loss(backend, submit, fetch):
    await backend.save_queue_settings("default", QueueSettings(visibility_timeout=5, max_deliveries=2))
    job = await submit()
    for n in range(2):
        await backend.claim(["default"], 1, f"worker-{n}", T0 + 10 * n)
        await backend.sweep(T0 + 10 * n + 6)

    stored = await fetch(job.id)

    assert stored.status is Status.FAILED
    assert [a["status"] for a in stored.to_json()["attempts"]] == ["lost", "lost"]


async def test_timeline__failure_and_hand_back__are_labelled(backend, submit, fetch):
    job = await submit(max_retries=0)
    [a] = await backend.claim(["default"], 1, "w1", T0)
    await backend.finish([Outcome(job.id, a.token, Status.QUEUED, uncount_delivery=True)], T0 + 1)
    [b] = await backend.claim(["default"], 1, "w2", T0 + 2)
    await backend.finish([Outcome(job.id, b.token, Status.FAILED, error=BOOM)], T0 + 3)

    attempts = (await fetch(job.id)).to_json()["attempts"]

    assert [a["status"] for a in attempts] == ["handed_back", "failed"]


async def test_timeline__process_died__attempt_lost_with_its_reason_job_queued(backend, submit, fetch):
    job = await submit()
    [lease] = await backend.claim(["default"], 1, "w1", T0)
    died = rules.delivery_lost(lease.job, lease.token, 10, "the child process died (signal 9)")

    await backend.finish([died], T0 + 1)

    stored = await fetch(job.id)
    assert stored.status is Status.QUEUED and stored.error is None and stored.deliveries == 1
    [entry] = stored.to_json()["attempts"]
    assert entry["status"] == "lost"
    assert entry["error"] == {"type": "ProcessDied", "message": "the child process died (signal 9)"}


async def test_timeline__refused_outcome__leaves_the_entry_alone(backend, submit, fetch):
    job = await submit()
    [lease] = await backend.claim(["default"], 1, "w1", T0)

    await backend.finish([Outcome(job.id, "not-the-token", Status.SUCCEEDED)], T0 + 1)

    [entry] = (await fetch(job.id)).to_json()["attempts"]
    assert entry["status"] == "running" and entry["finished_at"] is None
    assert lease.token


async def test_timeline__keeps_the_last_50_deliveries(backend, submit, fetch):
    job = await submit(max_retries=100)
    for n in range(55):
        [lease] = await backend.claim(["default"], 1, f"w{n}", T0 + n)
        await backend.finish([Outcome(job.id, lease.token, Status.QUEUED, uncount_delivery=True)], T0 + n + 0.5)

    attempts = (await fetch(job.id)).to_json()["attempts"]

    assert len(attempts) == 50
    assert attempts[0]["worker_id"] == "w5" and attempts[-1]["worker_id"] == "w54"


async def test_timeline__new_job__has_no_attempts(backend, submit, fetch):
    job = await submit()
    assert (await fetch(job.id)).to_json()["attempts"] == []
