"""Outcome rules: what becomes of a job after an attempt. Pure; engines only persist the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.backends.base import Outcome
from conveyor.core.errors import InvalidTransition
from conveyor.core.job import PENDING, Job, Status
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
    """The process running the job died: deliver again (the attempt ends ``lost``, with the
    reason), unless the delivery limit is reached."""
    if job.deliveries < max_deliveries:
        died = {"type": "ProcessDied", "message": reason, "traceback": None}
        return Outcome(job.id, token, Status.QUEUED, error=died)
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


#: Parent statuses under which a dependent may be retried: succeeded, or not finished yet.
RETRY_OK = frozenset({Status.SUCCEEDED.value, Status.RUNNING.value, *(s.value for s in PENDING)})


def retry_by_parents(
    deps: Mapping[str, Sequence[str]], status: Mapping[str, str], refuse: bool
) -> tuple[list[str], list[str]]:
    """Which jobs a retry or redrive moves, by their parents' ``status`` (id -> status; a parent
    missing from it is gone): ``(ready, waiting)``: all parents succeeded, or one still pending
    (it waits for them, as at enqueue). A job whose parent ended failed/cancelled/expired, or is
    gone, would run without its parent's result: ``refuse`` raises ``InvalidTransition`` naming
    the parent, else the job is left out. (Redis decides the same in ``requeue.lua``.)"""
    ready: list[str] = []
    waiting: list[str] = []
    for job_id, parents in deps.items():
        bad = next((p for p in parents if status.get(p) not in RETRY_OK), None)
        if bad is not None:
            if refuse:
                raise InvalidTransition(blocked(job_id, bad, status.get(bad)))
            continue
        (waiting if any(status[p] != "succeeded" for p in parents) else ready).append(job_id)
    return ready, waiting


def blocked(job_id: str, parent: str, ended: str | None) -> str:
    """Why a dependent cannot be retried: its parent ended badly (``ended``), or is gone (None)."""
    if ended is None:
        return f"job {job_id} depends on job {parent}, which no longer exists; submit a new job instead"
    return f"job {job_id} depends on job {parent}, which ended {ended}; retry job {parent} first"
