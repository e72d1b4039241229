"""``Job.from_json`` is the inverse of ``Job.to_json`` (what the CLI renders when it works through ``--api``)."""

from __future__ import annotations

from conveyor.core.job import Job, Status


def test_from_json__round_trips_every_public_field() -> None:
    job = Job(
        id="0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e", task="media.transcode", queue="media", status=Status.FAILED,
        args=["in/cat.mp4"], kwargs={"height": 480}, priority=7, progress={"fraction": 0.42, "message": "x"},
        error={"type": "ValueError", "message": "boom", "traceback": "tb"}, attempt=2, max_retries=1,
        timeout=60.0, depends_on=["0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6f"], idempotency_key="k",
        metadata={"who": "me"}, webhook="https://example.com/hook", deliveries=2, cancel_requested=True,
        created_at=1_800_000_000.123, scheduled_at=1_800_000_001.5, started_at=1_800_000_002.25,
        finished_at=1_800_000_003.0, updated_at=1_800_000_003.0, limit_key="media.transcode",
        concurrency_limit=2, rate_limit=(10, 60.0),
        attempts=[{"attempt": 1, "worker_id": "w1", "started_at": 1_800_000_002.25, "finished_at": 1_800_000_003.0,
                   "status": "failed", "error": {"type": "ValueError", "message": "boom"}}],
    )
    data = job.to_json()
    again = Job.from_json(data)
    assert again.to_json() == data
    assert again.status is Status.FAILED
    assert abs(again.created_at - job.created_at) < 0.001
    assert again.attempts[0]["started_at"] == 1_800_000_002.25


def test_from_json__fields_left_out_keep_defaults() -> None:
    job = Job.from_json({"id": "0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e", "task": "add", "status": "queued",
                         "created_at": "2026-11-28T10:00:00.000Z", "scheduled_at": None})
    assert job.queue == "default" and job.status is Status.QUEUED and job.scheduled_at is None
    assert job.created_at == 1_795_860_000.0


def test_to_json__an_error_always_has_type_message_and_traceback() -> None:
    job = Job(id="01a22233-d0de-71e6-b821-e3be6140d5a1", task="t",
              error={"type": "DeliveryLimitExceeded", "message": "delivered 10 times"})
    error = job.to_json()["error"]
    assert error == {"type": "DeliveryLimitExceeded", "message": "delivered 10 times", "traceback": None}
