"""What an enqueue writes: each new job's status and row, and the payload of ``insert_jobs``.

Pure functions over the batch and what the database returned: a job waits while a parent is
pending and is cancelled if one ended badly (:func:`dependency_statuses`); a job found stored by id
or idempotency key is returned instead of being inserted again (:func:`enqueued`). Concurrent
callers' jobs without parents go in one statement (:class:`Insert`, :func:`inserted_together`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor import serialization
from conveyor.backends.postgres.rows import record
from conveyor.backends.postgres.wakeups import announcements
from conveyor.core.errors import BackendUnavailable, ValidationError
from conveyor.core.job import Job, Status

#: The statuses of a parent that cancel the jobs waiting on it.
TERMINAL_FAIL = ("failed", "cancelled", "expired")

StatusAndError = tuple[Status, dict[str, Any] | None]


def ready_status(job: Job, now: float) -> Status:
    """The status of a new job whose parents (if any) all succeeded."""
    return Status.SCHEDULED if job.scheduled_at is not None and job.scheduled_at > now else Status.QUEUED


def insert_params(jobs: Sequence[Job], existing: Mapping[str, Job], statuses: Mapping[str, StatusAndError],
                  now: float, channel: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of the new jobs (not in ``existing``) and the parameters of ``insert_jobs``."""
    records, notify, due = [], set(), []
    parents = {p for j in jobs for p in j.depends_on}
    remap = {k: v.id for k, v in existing.items()}
    for job in jobs:
        if job.id in existing:
            continue
        status, error = statuses.get(job.id, (ready_status(job, now), None))
        row = record(job, status, error, now, remap, job.id in parents)
        if row["status"] == "queued" or (row["ready_at"] is not None and row["ready_at"] <= now):
            notify.add(job.queue)
        elif row["status"] == "scheduled":
            due.append((job.queue, row["ready_at"]))
        records.append(row)
    try:
        payload = serialization.dumps(records)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"job arguments must be JSON: {exc}") from exc
    return records, {"jobs": payload, "channel": channel, "notify": sorted(notify), "due": announcements(due)}


@dataclass(slots=True)
class Insert:
    """One caller's jobs without parents and the ``insert_jobs`` parameters that store them."""

    jobs: Sequence[Job]
    params: dict[str, Any]


def inserted_together(inserts: Sequence[Insert]) -> dict[str, Any]:
    """The ``insert_jobs`` parameters that store the jobs of every one of ``inserts`` at once."""
    if len(inserts) == 1:
        return inserts[0].params
    return {
        "jobs": "[" + ",".join(i.params["jobs"][1:-1] for i in inserts) + "]",  # JSON arrays, joined
        "channel": inserts[0].params["channel"],
        "notify": sorted({q for i in inserts for q in i.params["notify"]}),
        "due": list(dict.fromkeys(a for i in inserts for a in i.params["due"])),
    }


def enqueued(jobs: Sequence[Job], inserted: Mapping[str, Job], existing: Mapping[str, Job]) -> list[tuple[Job, bool]]:
    """Per job of the batch: the stored job, and whether this enqueue created it."""
    out: list[tuple[Job, bool]] = []
    for job in jobs:
        if job.id in inserted:
            out.append((inserted[job.id], True))
        elif job.id in existing:
            out.append((existing[job.id], False))
        else:  # pragma: no cover - a conflict whose winner vanished at once
            raise BackendUnavailable("PostgreSQL: a conflicting job disappeared during enqueue; retry")
    return out


def outside_parents(jobs: Sequence[Job], existing: Mapping[str, Job]) -> list[str]:
    """The parents of the new jobs that are not in the batch: their statuses are read (and locked)."""
    batch = {j.id: j for j in jobs if j.id not in existing}
    remap = {k: v.id for k, v in existing.items()}
    return sorted({remap.get(p, p) for j in batch.values() for p in j.depends_on} - set(batch))


def dependency_statuses(jobs: Sequence[Job], existing: Mapping[str, Job], parent_status: Mapping[str, str],
                        now: float) -> dict[str, StatusAndError]:
    """Per new job with parents: its status (waiting/cancelled/ready) from its parents' statuses
    (``parent_status``: those of :func:`outside_parents`; a missing one is a ``ValidationError``)."""
    batch = {j.id: j for j in jobs if j.id not in existing}
    remap = {k: v.id for k, v in existing.items()}
    many = len(jobs) > 1
    errors = [{"pointer": f"#/jobs/{n}/depends_on/{i}" if many else f"#/depends_on/{i}",
               "detail": f"depends_on: no job has id {p!r}"}
              for n, j in enumerate(jobs) if j.id in batch for i, p in enumerate(j.depends_on)
              if remap.get(p, p) not in batch and remap.get(p, p) not in parent_status]
    if errors:
        raise ValidationError("; ".join(e["detail"] for e in errors), errors)
    memo: dict[str, StatusAndError] = {}

    def resolve(job: Job) -> StatusAndError:
        if job.id in memo:
            return memo[job.id]
        memo[job.id] = (Status.WAITING, None)  # guards against cycles inside a batch
        result: StatusAndError = (ready_status(job, now), None)
        for pid in (remap.get(p, p) for p in job.depends_on):
            pstatus = str(resolve(batch[pid])[0]) if pid in batch else parent_status[pid]
            if pstatus in TERMINAL_FAIL:
                result = (Status.CANCELLED, {"type": "DependencyFailed",
                                             "message": f"parent {pid} ended {pstatus}"})
                break
            if pstatus != Status.SUCCEEDED:
                result = (Status.WAITING, None)
        memo[job.id] = result
        return result

    return {j.id: resolve(j) for j in batch.values() if j.depends_on}
