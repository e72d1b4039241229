"""The job: a frozen record of one submitted run of a task, and its statuses."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.serialization import from_rfc3339, to_rfc3339


class Status(enum.StrEnum):
    """Where a job is in its life."""

    WAITING = "waiting"  #: dependencies not done yet
    SCHEDULED = "scheduled"  #: not before ``scheduled_at``
    QUEUED = "queued"  #: ready for a worker
    RUNNING = "running"  #: leased by a worker
    RETRYING = "retrying"  #: an attempt failed; next attempt at ``scheduled_at``
    SUCCEEDED = "succeeded"
    FAILED = "failed"  #: retries exhausted, timed out, or delivered too often (dead letter)
    CANCELLED = "cancelled"
    EXPIRED = "expired"  #: the queue's retention ran out before it ran

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
#: Statuses a worker can claim from once ``scheduled_at`` has passed.
READY = frozenset({Status.QUEUED, Status.SCHEDULED, Status.RETRYING})
#: Statuses from which a job can be cancelled at once (no worker involved).
PENDING = frozenset({Status.WAITING, Status.SCHEDULED, Status.QUEUED, Status.RETRYING})

#: The transition table: every status change any engine may make.
TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.WAITING: frozenset({Status.QUEUED, Status.SCHEDULED, Status.CANCELLED, Status.EXPIRED}),
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.RUNNING, Status.CANCELLED, Status.EXPIRED, Status.FAILED}),
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.EXPIRED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.RETRYING, Status.QUEUED, Status.CANCELLED}),
    Status.RETRYING: frozenset({Status.QUEUED, Status.RUNNING, Status.CANCELLED, Status.EXPIRED, Status.FAILED}),
    Status.SUCCEEDED: frozenset(),
    # redrive / retry: waiting for a dependent whose parent is pending again
    Status.FAILED: frozenset({Status.QUEUED, Status.WAITING}),
    Status.CANCELLED: frozenset({Status.QUEUED, Status.WAITING}),
    Status.EXPIRED: frozenset({Status.QUEUED, Status.WAITING}),
}


def can_transition(old: Status, new: Status) -> bool:
    """True when the transition table allows ``old → new``."""
    return new in TRANSITIONS[old]


@dataclass(frozen=True, slots=True)
class Job:
    """One submitted run of a task. Times are epoch seconds (float); JSON uses RFC 3339."""

    id: str  #: UUIDv7
    task: str  #: registered task name
    queue: str = "default"
    status: Status = Status.QUEUED
    args: tuple[Any, ...] | list[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0  #: 0–9, 9 runs first
    progress: Mapping[str, Any] | None = None  #: ``{"fraction": 0.42, "message": "..."}``
    result: Any = None
    error: Mapping[str, Any] | None = None  #: ``{"type", "message", "traceback"}``
    attempt: int = 1  #: 1 + the number of failed attempts
    max_retries: int = 3
    timeout: float | None = None  #: seconds per attempt
    depends_on: tuple[str, ...] | list[str] = ()
    idempotency_key: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    webhook: str | None = None
    created_at: float = 0.0
    scheduled_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    deliveries: int = 0  #: times leased to a worker, crashes included
    cancel_requested: bool = False
    revision: int = 1  #: bumped on every change; ETag and SSE event id
    worker_id: str | None = None  #: holder of the current lease
    lease_token: str | None = None
    lease_expires_at: float | None = None
    #: The global limit this job counts against (resolved from the task's ``limit_key`` at
    #: enqueue; the task name by default); ``None`` when the task has no limits.
    limit_key: str | None = None
    #: At most this many jobs of ``limit_key`` run at once, across all workers.
    concurrency_limit: int | None = None
    #: At most ``count`` jobs of ``limit_key`` start per ``per_seconds``: ``(count, per_seconds)``.
    rate_limit: tuple[int, float] | None = None
    #: The timeline, oldest first (the last ``MAX_ATTEMPTS`` deliveries): one entry per delivery,
    #: ``{"attempt", "worker_id", "started_at", "finished_at", "status", "error"}`` with epoch
    #: seconds; ``status`` is ``running`` while it runs, then the outcome (``succeeded``,
    #: ``retrying``, ``failed``, ``cancelled``, ``handed_back``) or ``lost`` (lease expired, or
    #: its process died: ``error`` says how).
    attempts: tuple[Mapping[str, Any], ...] | list[Mapping[str, Any]] = ()

    def replace(self, **changes: Any) -> Job:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The public JSON resource of SPEC §3."""
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "status": str(self.status),
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "priority": self.priority,
            "progress": dict(self.progress) if self.progress is not None else None,
            "result": self.result,
            # one shape on every engine: type, message, traceback (null when there is none)
            "error": {**self.error, "traceback": self.error.get("traceback")} if self.error is not None else None,
            "attempt": self.attempt,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "depends_on": list(self.depends_on),
            "idempotency_key": self.idempotency_key,
            "metadata": dict(self.metadata),
            "webhook": self.webhook,
            "deliveries": self.deliveries,
            "cancel_requested": self.cancel_requested,
            "created_at": to_rfc3339(self.created_at),
            "scheduled_at": to_rfc3339(self.scheduled_at),
            "started_at": to_rfc3339(self.started_at),
            "finished_at": to_rfc3339(self.finished_at),
            "updated_at": to_rfc3339(self.updated_at),
            "limit_key": self.limit_key,
            "concurrency_limit": self.concurrency_limit,
            "rate_limit": (
                {"count": self.rate_limit[0], "per": self.rate_limit[1]} if self.rate_limit is not None else None
            ),
            "attempts": [attempt_json(a) for a in self.attempts],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        """The inverse of ``to_json``: a job from its public JSON (fields it leaves out keep their defaults)."""
        rate = data.get("rate_limit")
        return cls(
            id=str(data["id"]),
            task=str(data["task"]),
            queue=str(data.get("queue", "default")),
            status=Status(data.get("status", Status.QUEUED)),
            args=list(data.get("args") or []),
            kwargs=dict(data.get("kwargs") or {}),
            priority=int(data.get("priority", 0)),
            progress=dict(data["progress"]) if data.get("progress") is not None else None,
            result=data.get("result"),
            error=dict(data["error"]) if data.get("error") is not None else None,
            attempt=int(data.get("attempt", 1)),
            max_retries=int(data.get("max_retries", 3)),
            timeout=data.get("timeout"),
            depends_on=list(data.get("depends_on") or []),
            idempotency_key=data.get("idempotency_key"),
            metadata=dict(data.get("metadata") or {}),
            webhook=data.get("webhook"),
            deliveries=int(data.get("deliveries", 0)),
            cancel_requested=bool(data.get("cancel_requested", False)),
            created_at=_epoch(data.get("created_at")) or 0.0,
            scheduled_at=_epoch(data.get("scheduled_at")),
            started_at=_epoch(data.get("started_at")),
            finished_at=_epoch(data.get("finished_at")),
            updated_at=_epoch(data.get("updated_at")) or 0.0,
            limit_key=data.get("limit_key"),
            concurrency_limit=data.get("concurrency_limit"),
            rate_limit=(int(rate["count"]), float(rate["per"])) if rate else None,
            attempts=[attempt_from_json(a) for a in data.get("attempts") or []],
        )


#: How many timeline entries a job keeps (the oldest are dropped).
MAX_ATTEMPTS = 50


#: The error of a timeline entry whose lease expired (the worker died or stalled).
LEASE_LOST: Mapping[str, Any] = {"type": "LeaseExpired", "message": "the worker stopped renewing its lease"}

#: The error of a job cancelled while it ran whose worker was lost before stopping it: the sweep
#: of its expired lease ends it ``cancelled`` (cancellation is stored; it is never run again).
CANCELLED_LOST: Mapping[str, Any] = {"type": "Cancelled", "message": "cancelled while its worker was lost",
                                     "traceback": None}
#: The error of a job cancelled while it ran that its worker handed back (``queued`` outcome).
CANCELLED_HANDED_BACK: Mapping[str, Any] = {"type": "Cancelled", "message": "cancelled while its worker handed it back",
                                            "traceback": None}


def attempt_status(outcome: Status, error: Mapping[str, Any] | None = None) -> str:
    """The timeline label of an outcome: its status; for a ``queued`` one, ``handed_back`` (a
    shutdown's hand-back) or ``lost`` (with the error saying why: the job's process died)."""
    if outcome is Status.QUEUED:
        return "lost" if error is not None else "handed_back"
    return outcome.value


def brief_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """An error as a timeline entry keeps it: type and message (the job's ``error`` has the traceback)."""
    return {"type": error.get("type"), "message": error.get("message")}


def attempt_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One timeline entry as the job JSON shows it (RFC 3339 times)."""
    return {
        "attempt": entry.get("attempt"),
        "worker_id": entry.get("worker_id"),
        "started_at": to_rfc3339(entry.get("started_at")),
        "finished_at": to_rfc3339(entry.get("finished_at")),
        "status": entry.get("status"),
        "error": entry.get("error"),
    }


def attempt_from_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``attempt_json``: one timeline entry with epoch-second times."""
    return {**entry, "started_at": _epoch(entry.get("started_at")), "finished_at": _epoch(entry.get("finished_at"))}


def _epoch(text: str | None) -> float | None:
    return None if text is None else from_rfc3339(text)


def error_info(exc: BaseException, traceback_text: str | None = None) -> dict[str, Any]:
    """The ``error`` object of a job that raised ``exc``: always storable text, whatever the
    exception (a ``__str__`` that raises, a lone surrogate from a file name)."""
    try:
        message = str(exc)
    except Exception as inner:
        message = f"<{type(exc).__name__}: str() failed with {type(inner).__name__}>"
    return {"type": type(exc).__name__, "message": storable_text(message),
            "traceback": None if traceback_text is None else storable_text(traceback_text)}


def storable_text(text: str) -> str:
    """``text`` as every engine stores it: valid UTF-8 (lone surrogates written as ``\\udcff``),
    without U+0000 (written ``\\x00``: PostgreSQL cannot store it)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")
