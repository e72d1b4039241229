"""The dependency graph inside a write transaction: what a parent's ending does to its children.

A child waits until all its parents succeeded (``statements.RELEASE`` then makes it ready). A
parent that ended badly (``ENDED_BADLY``) cancels its pending children, and theirs, level by
level (``cascade``). A retry or redrive puts a job back ready, or waiting while a parent is still
pending (``by_parents``, by ``rules.retry_by_parents``). Each function runs in the caller's
transaction, so the rule holds atomically with the write that triggered it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from conveyor.backends.sqlite.rows import dumps, loads
from conveyor.backends.sqlite.statements import CASCADE, IDS
from conveyor.core import rules
from conveyor.core.job import Status

#: The endings that cancel a job's pending dependents.
ENDED_BADLY = frozenset({Status.FAILED, Status.CANCELLED, Status.EXPIRED})


def cascade(c: sqlite3.Connection, ended: Sequence[str], now: float) -> int:
    """Cancel the pending dependents of ``ended`` jobs, level by level; how many."""
    total, frontier = 0, list(ended)
    while frontier:
        frontier = [r[0] for r in c.execute(CASCADE, (now, dumps(frontier))).fetchall()]
        total += len(frontier)
    return total


def by_parents(c: sqlite3.Connection, found: Sequence[Any], refuse: bool) -> tuple[list[str], list[str]]:
    """The ids of ``found`` (``(id, depends_on)`` rows) to requeue: ``(ready, waiting)``, by
    ``rules.retry_by_parents``."""
    deps = {job_id: loads(raw) or [] for job_id, raw in found}
    parents = sorted({p for ps in deps.values() for p in ps})
    status = dict(c.execute(f"SELECT id, status FROM jobs WHERE id IN {IDS.format(n=1)}",
                            (dumps(parents),)).fetchall()) if parents else {}
    return rules.retry_by_parents(deps, status, refuse)
