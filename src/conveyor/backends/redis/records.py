"""What this engine stores, as Python values: a job's record, a queue's settings, a worker's entry.

A job's record is a hash of strings (see the key layout in ``backend.py``): ``record_fields``
writes the fields of a new job that enqueue.lua does not write from its per-job header, and
``job_from_hash`` reads a record back, as the scripts return it. Also here: the other strings
read out of the scripts' replies (a refused requeue's reason, a flat field-value list) and how
a number is written for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from conveyor.backends.base import WorkerInfo
from conveyor.core.errors import ValidationError
from conveyor.core.job import Job, Status
from conveyor.core.queues import QueueSettings
from conveyor.serialization import dumps, loads


def float_arg(x: float) -> str:
    """A number as a script argument: ``repr`` keeps every digit of a float (Lua reads it back exactly)."""
    return repr(float(x))


def job_from_hash(h: Mapping[str, str]) -> Job:
    """A ``Job`` from a stored record. Only the fields present are decoded (a record leaves out
    those at their default, see ``record_fields``): a worker decodes every job it leases."""
    fields: dict[str, Any] = {"args": [], "depends_on": [], "attempts": []}  # lists, as decoded
    for name, text in h.items():
        decode = _DECODE.get(name)
        if decode is not None and text != "":  # '' = none (a finished job's blanked lease)
            fields[name] = decode(text)
    if "updated_at" not in fields:
        fields["updated_at"] = fields.get("created_at", 0.0)
    if "rate_count" in h:
        fields["rate_limit"] = (int(h["rate_count"]), float(h["rate_per"]))
    return Job(**fields)


_STATUS = {status.value: status for status in Status}


def _str(text: str) -> str:
    return text


#: how each stored field of a record is read; fields not named here are the scripts' own
_DECODE: dict[str, Callable[[str], Any]] = {
    "id": _str, "task": _str, "queue": _str, "status": _STATUS.__getitem__,
    **dict.fromkeys(("args", "kwargs", "progress", "result", "error", "depends_on", "metadata", "attempts"),
                    json.loads),
    **dict.fromkeys(("priority", "attempt", "max_retries", "deliveries", "revision"), int),
    **dict.fromkeys(("timeout", "created_at", "scheduled_at", "started_at", "finished_at", "updated_at",
                     "lease_expires_at"), float),
    **dict.fromkeys(("idempotency_key", "webhook", "worker_id", "lease_token", "limit_key"), _str),
    "cancel_requested": "1".__eq__,
    "concurrency_limit": lambda text: int(text) or None,
}


def pairs_to_dict(flat: Sequence[str]) -> dict[str, str]:
    """``[k1, v1, k2, v2, …]`` (a script's reply of a hash) as a dict."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))


#: containers, stored unless empty
_JSON_FIELDS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("args", list), ("kwargs", dict), ("depends_on", list), ("metadata", dict))
_ANY_JSON_FIELDS = ("progress", "result", "error")  #: stored unless None
_INT_FIELDS = (("attempt", 1), ("max_retries", 3), ("deliveries", 0))  #: stored unless the default
_TIME_FIELDS = ("timeout", "scheduled_at", "started_at", "finished_at", "lease_expires_at")
_STR_FIELDS = ("webhook", "worker_id", "lease_token", "limit_key")


def _json_fields(job: Job) -> list[str]:
    out: list[str] = []
    try:
        for name, plain in _JSON_FIELDS:
            value = getattr(job, name)
            if value:
                out += [name, dumps(plain(value))]
        for name in _ANY_JSON_FIELDS:
            value = getattr(job, name)
            if value is not None:
                out += [name, dumps(value)]
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"job {job.id}: arguments are not JSON: {exc}",
                              [{"pointer": "#/args", "detail": f"not JSON: {exc}"}]) from exc
    return out


def record_fields(job: Job) -> list[str]:
    """The stored fields of a new job beyond those enqueue.lua writes from its per-job header (id,
    task, queue, created_at, priority, idempotency_key; status and revision).

    Fields at the default ``job_from_hash`` reads for a missing field (no arguments, attempt 1,
    ...) are left out: a smaller record is cheaper to write, read and return.
    """
    out = _json_fields(job)
    for name, default in _INT_FIELDS:
        value = getattr(job, name)
        if value != default:
            out += [name, str(int(value))]
    if job.cancel_requested:
        out += ["cancel_requested", "1"]
    if job.updated_at and job.updated_at != job.created_at:
        out += ["updated_at", float_arg(job.updated_at)]
    for name in _TIME_FIELDS:
        value = getattr(job, name)
        if value is not None:
            out += [name, float_arg(value)]
    for name in _STR_FIELDS:
        value = getattr(job, name)
        if value is not None:
            out += [name, value]
    if job.concurrency_limit is not None:
        out += ["concurrency_limit", str(int(job.concurrency_limit))]
    if job.rate_limit is not None:
        out += ["rate_count", str(int(job.rate_limit[0])), "rate_per", float_arg(job.rate_limit[1])]
    return out


def settings_from_hash(h: Mapping[str, str]) -> QueueSettings:
    """A queue's settings from its ``cfg`` hash (a field not stored is at its default)."""
    d = QueueSettings()
    return QueueSettings(
        retention=float(h.get("retention", d.retention)),
        visibility_timeout=float(h.get("visibility_timeout", d.visibility_timeout)),
        max_deliveries=int(h.get("max_deliveries", d.max_deliveries)),
        result_ttl=float(h.get("result_ttl", d.result_ttl)),
        paused=h.get("paused", "0") == "1",
    )


def worker_entry(worker: WorkerInfo, now: float) -> str:
    """A worker's entry in the registry (``{P}:workers``), as of its heartbeat at ``now``."""
    return dumps({"id": worker.id, "host": worker.host, "pid": worker.pid, "queues": list(worker.queues),
                  "concurrency": worker.concurrency, "running": list(worker.running),
                  "started_at": worker.started_at or now, "last_heartbeat": now})


def worker_from_entry(text: str | bytes) -> WorkerInfo:
    """A worker's entry in the registry, read back."""
    d = loads(text)
    return WorkerInfo(id=d["id"], host=d["host"], pid=int(d["pid"]), queues=tuple(d["queues"]),
                      concurrency=int(d["concurrency"]), running=tuple(d["running"]),
                      started_at=float(d["started_at"]), last_heartbeat=float(d["last_heartbeat"]))
