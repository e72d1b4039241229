"""Listing jobs: the page query for each filter.

A page is newest first and starts below the last id of the previous page (what its cursor holds:
``cursors.encode_job_id``), walking the index that holds the status asked for: the ready set for
``queued``, the running set for ``running``, one ``jobs_cold`` range per queue, merged, for the
statuses off the hot path, else the primary key backwards (or ``jobs_task``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from conveyor.backends.base import JobQuery
from conveyor.backends.sqlite.statements import COLD, COLD_QUEUES, COLS
from conveyor.core.job import Status

#: Most index ranges one listing merges (SQLite allows 500 terms in one compound SELECT).
_MAX_RANGES = 200
#: The statuses ``COLD`` (the ``jobs_cold`` index) holds.
_COLD_STATUSES = tuple(s for s in Status if s not in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED))


def list_sql(c: sqlite3.Connection, query: JobQuery, after: str | None, limit: int) -> tuple[str, list[Any]]:
    """The page query (newest first), walking the index that holds the status asked for.

    Statuses off the hot path: one ``jobs_cold`` range per queue, merged. ``queued`` and
    ``running``: the ready set or the running set. Otherwise (``succeeded``, no status): the
    primary key backwards, or ``jobs_task``.
    """
    params: list[Any] = [limit, after or "\U0010ffff"]
    where = ["id < ?2"]
    for column, value in (("task", query.task), ("queue", query.queue)):
        if value is not None:
            params.append(value)
            where.append(f"{column} = ?{len(params)}")
    status = Status(query.status) if query.status is not None else None
    if status in _COLD_STATUSES:
        return _list_cold_sql(c, query, status, where, params)
    if status is not None:
        where.append(f"status = '{status.value}'")
    source = "jobs"
    if status is Status.QUEUED:
        source, where = "jobs INDEXED BY jobs_ready", [*where, "ready_at IS NOT NULL"]
    elif status is Status.RUNNING:
        source, where = "jobs INDEXED BY jobs_lease", [*where, "lease_expires_at IS NOT NULL"]
    return f"SELECT {COLS} FROM {source} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?1", params


def _list_cold_sql(c: sqlite3.Connection, query: JobQuery, status: Status, where: list[str],
                   params: list[Any]) -> tuple[str, list[Any]]:
    queues = [query.queue] if query.queue is not None else [r[0] for r in c.execute(COLD_QUEUES)]
    if not queues or len(queues) > _MAX_RANGES:  # none, or too many to merge: walk the primary key
        return (f"SELECT {COLS} FROM jobs WHERE {' AND '.join(where)} AND status = '{status.value}' "
                "ORDER BY id DESC LIMIT ?1", params)
    where = [w for w in where if not w.startswith("queue =")]
    params = params[:2] + ([query.task] if query.task is not None else [])
    ranges = []
    for queue in queues:
        params.append(queue)
        ranges.append(f"SELECT * FROM (SELECT id FROM jobs WHERE queue = ?{len(params)} AND status = '{status.value}' "
                      f"AND {COLD} AND {' AND '.join(where)} ORDER BY id DESC LIMIT ?1)")
    return (f"SELECT {COLS} FROM jobs WHERE id IN (SELECT id FROM ({' UNION ALL '.join(ranges)}) "
            "ORDER BY id DESC LIMIT ?1) ORDER BY id DESC", params)
