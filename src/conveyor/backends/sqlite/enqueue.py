"""What one ``enqueue`` call writes: a job's row, its dependency edges and its first status.

Decided inside the enqueue's write transaction, so that the rules hold across processes: an
idempotency key already stored (or used earlier in the batch) returns that job instead of a new
one; a parent id must name a stored job or one in the same batch (a parent deduplicated to a
stored job stands for that job); and a new job starts cancelled when a parent ended badly,
waiting until every parent succeeded, scheduled when it is delayed, else queued.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from conveyor.backends.sqlite.dependencies import ENDED_BADLY
from conveyor.backends.sqlite.rows import STATUS, dumps, job_from_row, json_or_empty
from conveyor.backends.sqlite.statements import COLS, IDS
from conveyor.core.errors import ValidationError
from conveyor.core.job import Job, Status


class EnqueuePlan:
    """The rows one ``enqueue`` call writes, decided inside its write transaction.

    Resolves idempotency keys (stored, or earlier in the batch), parent ids (stored, or
    earlier in the batch; a parent deduplicated to a stored job stands for that job) and each
    new job's first status.
    """

    def __init__(self, c: sqlite3.Connection, jobs: Sequence[Job], now: float) -> None:
        self.now = now
        self.rows: list[tuple[Any, ...]] = []
        self.deps: list[tuple[str, str]] = []
        self.results: list[tuple[Job, bool]] = []
        self.stored = self._stored_by_key(c, jobs)
        self.alias: dict[str, str] = {}  #: submitted id → stored id (deduplicated by key)
        self.status: dict[str, Status] = {}
        self.batch_ids = {j.id for j in jobs}
        self._load_parent_status(c, jobs)
        errors = []
        for index, job in enumerate(jobs):
            errors += self._unknown_parents(job, index if len(jobs) > 1 else None)
        if errors:
            raise ValidationError("; ".join(e["detail"] for e in errors), errors)
        for job in jobs:
            self._add(job)

    def _stored_by_key(self, c: sqlite3.Connection, jobs: Sequence[Job]) -> dict[str, Job]:
        keys = [j.idempotency_key for j in jobs if j.idempotency_key is not None]
        if not keys:
            return {}
        rows = c.execute(f"SELECT {COLS} FROM jobs WHERE idempotency_key IN {IDS.format(n=1)}", (dumps(keys),))
        return {r[14]: job_from_row(r) for r in rows}

    def _load_parent_status(self, c: sqlite3.Connection, jobs: Sequence[Job]) -> None:
        for job in self.stored.values():
            self.status[job.id] = job.status
        outside = {p for j in jobs for p in j.depends_on if p not in self.batch_ids}
        if outside:
            rows = c.execute(f"SELECT id, status FROM jobs WHERE id IN {IDS.format(n=1)}", (dumps(list(outside)),))
            self.status.update((i, STATUS[s]) for i, s in rows)

    def _unknown_parents(self, job: Job, index: int | None) -> list[dict[str, str]]:
        prefix = "#" if index is None else f"#/jobs/{index}"
        return [{"pointer": f"{prefix}/depends_on/{i}", "detail": f"depends_on: no job has id {p!r}"}
                for i, p in enumerate(job.depends_on) if p not in self.batch_ids and p not in self.status]

    def _add(self, job: Job) -> None:
        key = job.idempotency_key
        prior = self.stored.get(key) if key is not None else None
        if prior is not None:
            self.alias[job.id] = prior.id
            self.results.append((prior, False))
            return
        parents = list(dict.fromkeys(self.alias.get(p, p) for p in job.depends_on))
        status, error = self._first_status(job, parents)
        now = self.now
        ready_at = now if status is Status.QUEUED else job.scheduled_at if status is Status.SCHEDULED else None
        finished_at = now if status is Status.CANCELLED else None
        created_at = job.created_at or now
        pending_hook = status is Status.CANCELLED and job.webhook is not None
        new = Job(
            id=job.id, task=job.task, queue=job.queue, status=status, args=job.args, kwargs=job.kwargs,
            priority=job.priority, progress=job.progress, error=error, attempt=job.attempt,
            max_retries=job.max_retries, timeout=job.timeout, depends_on=parents,
            idempotency_key=key, metadata=job.metadata, webhook=job.webhook, created_at=created_at,
            scheduled_at=job.scheduled_at, finished_at=finished_at, updated_at=now, limit_key=job.limit_key,
            concurrency_limit=job.concurrency_limit, rate_limit=job.rate_limit,
        )
        self.rows.append((
            new.id, new.task, new.queue, status.value, dumps(list(new.args)), json_or_empty(new.kwargs, "{}"),
            new.priority, dumps(new.progress) if new.progress is not None else None, None,
            dumps(error) if error is not None else None, new.attempt, new.max_retries, new.timeout,
            json_or_empty(parents, "[]"), key, json_or_empty(new.metadata, "{}"), new.webhook, created_at,
            new.scheduled_at, finished_at, now, ready_at, "pending" if pending_hook else None,
            now if pending_hook else None, new.limit_key, new.concurrency_limit,
            new.rate_limit[0] if new.rate_limit else None, new.rate_limit[1] if new.rate_limit else None,
        ))
        self.deps.extend((new.id, p) for p in parents)
        self.status[new.id] = status
        if key is not None:
            self.stored[key] = new
        self.results.append((new, True))

    def _first_status(self, job: Job, parents: Sequence[str]) -> tuple[Status, dict[str, str] | None]:
        for parent in parents:
            ended = self.status.get(parent)
            if ended in ENDED_BADLY:
                return Status.CANCELLED, {"type": "DependencyFailed", "message": f"parent {parent} ended {ended}"}
        if any(self.status.get(p) is not Status.SUCCEEDED for p in parents):
            return Status.WAITING, None
        if job.scheduled_at is not None and job.scheduled_at > self.now:
            return Status.SCHEDULED, None
        return Status.QUEUED, None
