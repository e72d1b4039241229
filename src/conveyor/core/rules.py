"""Outcome rules: what becomes of a job after an attempt. Pure; engines only persist the result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conveyor.backends.base import Outcome
from conveyor.core.job import Job, Status
from conveyor.core.retry import backoff
from conveyor.core.task import TaskOptions


def succeeded(job: Job, token: str, result: Any) -> Outcome:
    return Outcome(job.id, token, Status.SUCCEEDED, result=result)


def failed_attempt(
    job: Job, token: str, error: Mapping[str, Any], now: float, options: TaskOptions | None = None
) -> Outcome:
    """Retry with exponential backoff and full jitter while retries remain, else fail."""
    if job.attempt <= job.max_retries:
        o = options or TaskOptions()
        wait = backoff(job.attempt, o.backoff_base, o.backoff_cap)
        return Outcome(job.id, token, Status.RETRYING, error=error, scheduled_at=now + wait, attempt=job.attempt + 1)
    return Outcome(job.id, token, Status.FAILED, error=error)


def cancelled(job: Job, token: str) -> Outcome:
    return Outcome(
        job.id,
        token,
        Status.CANCELLED,
        error={"type": "Cancelled", "message": "the job was cancelled while it ran", "traceback": None},
    )


def handed_back(job: Job, token: str) -> Outcome:
    """A worker shutting down returns the job for immediate redelivery, not counted as a delivery."""
    return Outcome(job.id, token, Status.QUEUED, uncount_delivery=True)


def delivery_lost(job: Job, token: str, max_deliveries: int, reason: str) -> Outcome:
    """The process running the job died: deliver again, unless the delivery limit is reached."""
    if job.deliveries >= max_deliveries:
        return Outcome(
            job.id,
            token,
            Status.FAILED,
            error={
                "type": "DeliveryLimitExceeded",
                "message": f"delivered {job.deliveries} times without finishing ({reason})",
                "traceback": None,
            },
        )
    return Outcome(job.id, token, Status.QUEUED)
