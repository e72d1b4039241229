"""Values as rows: the record a new job is inserted as, and the Job, queue settings or worker a row reads back as.

Job rows hold the Job fields in dataclass order (:data:`JOB_FIELDS`, the ``__JOB__`` of the named
queries), so a row becomes a Job positionally. The connections decode ``json`` and ``jsonb``
columns with :data:`ADAPTERS`; pages of ``list_jobs`` are resumed from an opaque cursor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import psycopg.adapt
import psycopg.types.json

from conveyor import serialization
from conveyor.backends import cursors
from conveyor.backends.base import WorkerInfo
from conveyor.core.ids import job_id_of
from conveyor.core.job import Job, Status
from conveyor.core.queues import QueueSettings

#: The Job fields, in dataclass order: rows are built positionally (``Job(*row)``).
JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))
_STATUS_INDEX = JOB_FIELDS.index("status")
_RATE_INDEX = JOB_FIELDS.index("rate_limit")

_TRIVIAL_JSON: dict[bytes, Any] = {b"[]": [], b"{}": {}, b"null": None}


def _json_loads(data: bytes | bytearray | memoryview | str) -> Any:
    """``json.loads``, short-cutting the empty values most job columns hold."""
    raw = bytes(data) if not isinstance(data, str) else data.encode()
    if len(raw) <= 4 and raw in _TRIVIAL_JSON:
        value = _TRIVIAL_JSON[raw]
        return [] if value == [] else {} if value == {} else value
    return serialization.loads(raw)


#: The adapters of the engine's connections: psycopg's, with the JSON loader above.
ADAPTERS = psycopg.adapt.AdaptersMap(psycopg.adapters)
psycopg.types.json.set_json_loads(_json_loads, ADAPTERS)


def row_to_job(row: Sequence[Any]) -> Job:
    """The Job of a row whose first columns are :data:`JOB_FIELDS`."""
    values = list(row[: len(JOB_FIELDS)])
    values[_STATUS_INDEX] = Status(values[_STATUS_INDEX])
    rate = values[_RATE_INDEX]
    if rate is not None:  # stored as [count, per_seconds]
        values[_RATE_INDEX] = (int(rate[0]), float(rate[1]))
    return Job(*values)


def record(job: Job, status: Status, error: Mapping[str, Any] | None, now: float,
           remap: Mapping[str, str], has_children: bool) -> dict[str, Any]:
    """The row to insert for ``job`` (as JSON for ``jsonb_to_recordset``)."""
    created = job.created_at or now
    ready_at = {Status.QUEUED: now, Status.SCHEDULED: job.scheduled_at}.get(status)
    return {
        "id": job.id, "task": job.task, "queue": job.queue, "status": str(status),
        "args": list(job.args), "kwargs": dict(job.kwargs), "priority": job.priority,
        "progress": dict(job.progress) if job.progress is not None else None,
        "result": None, "error": dict(error) if error is not None else None,
        "attempt": job.attempt, "max_retries": job.max_retries, "timeout": job.timeout,
        "depends_on": [remap.get(p, p) for p in job.depends_on],
        "idempotency_key": job.idempotency_key, "metadata": dict(job.metadata), "webhook": job.webhook,
        "created_at": created, "scheduled_at": job.scheduled_at, "started_at": None,
        "finished_at": now if status.terminal else None, "updated_at": now,
        "deliveries": 0, "cancel_requested": False, "revision": 1,
        "ready_at": ready_at, "has_children": has_children, "limit_key": job.limit_key,
        "concurrency_limit": job.concurrency_limit,
        "rate_limit": list(job.rate_limit) if job.rate_limit is not None else None,
    }


def queue_settings_of(row: Sequence[Any]) -> QueueSettings:
    """The settings of a queue row (``retention, visibility_timeout, max_deliveries, result_ttl, paused``)."""
    return QueueSettings(retention=float(row[0]), visibility_timeout=float(row[1]),
                         max_deliveries=int(row[2]), result_ttl=float(row[3]), paused=bool(row[4]))


def worker_of(row: Sequence[Any]) -> WorkerInfo:
    """The WorkerInfo of a row of the ``workers`` query."""
    return WorkerInfo(id=row[0], host=row[1], pid=int(row[2]), queues=tuple(row[3]), concurrency=int(row[4]),
                      running=tuple(row[5]), started_at=float(row[6]), last_heartbeat=float(row[7]))


def encode_cursor(created_at: float, job_id: str) -> str:
    """The cursor of the page after the job created at ``created_at`` with id ``job_id``."""
    return cursors.encode(serialization.dumps([created_at, job_id]).encode())


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``(created_at, job_id)`` of a cursor made by :func:`encode_cursor` (``invalid_cursor`` if not)."""
    return cursors.decode(cursor, _created_at_and_id)


def _created_at_and_id(raw: bytes) -> tuple[float, str] | None:
    created_at, job_id = serialization.loads(raw)
    last_at, last_id = float(created_at), job_id_of(job_id)
    return (last_at, last_id) if last_id is not None and math.isfinite(last_at) else None
