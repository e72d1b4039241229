"""Concurrency and rate limits at claim time: which ready jobs a claim may lease.

A job with a ``limit_key`` runs only while its key has fewer running jobs than its
``concurrency_limit`` and fewer starts in the last ``per`` seconds than its ``rate_count``
(``limit_starts`` keeps the recent starts). ``admitted`` walks the claimable jobs in claim order,
in rounds that skip the keys found full, and a ``Gate`` decides each one. Both only read, inside
the claim's write transaction: the caller records the gate's starts and leases the ids.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from conveyor.backends.claim_limits import RateWindows, round_sizes
from conveyor.backends.sqlite.rows import dumps
from conveyor.backends.sqlite.statements import RUNNING_OF_KEY, STARTS_OF_KEY, candidates_sql


class Gate:
    """Admits limited jobs while their key has a free slot and room in its rate window."""

    def __init__(self, c: sqlite3.Connection, now: float) -> None:
        self.c = c
        # a start counts from when it happened: a claim that waited for the write lock runs after its ``now``
        self.now = max(now, time.time())
        self.full: set[str] = set()
        self.running: dict[str, int] = {}
        self.windows = RateWindows(self.now)  #: its starts are the rows for limit_starts

    def admit(self, key: str | None, concurrency: int | None, rate: tuple[int, float] | None) -> bool:
        """May a job of ``key`` start now? If so, it counts against the key's limits."""
        if key is None:
            return True
        if key in self.full:
            return False
        running = self.running.get(key)
        if running is None:
            running = self.running[key] = self.c.execute(RUNNING_OF_KEY, (key,)).fetchone()[0]
        if concurrency is not None and running >= concurrency:
            self.full.add(key)
            return False
        if rate is not None:
            count, per = rate
            if (key, per) not in self.windows:
                n, oldest = self.c.execute(STARTS_OF_KEY, (key, self.now - per)).fetchone()
                self.windows.counted(key, per, n, oldest)
            if not self.windows.take(key, count, per):
                self.full.add(key)
                return False
        self.running[key] = running + 1
        return True


def admitted(c: sqlite3.Connection, names: Sequence[str], limit: int, now: float) -> tuple[list[str], Gate]:
    """Up to ``limit`` ids of queues ``names`` in claim order, past the jobs whose key is at its
    limit (they stay queued), and the gate that admitted them (see its ``windows``)."""
    gate = Gate(c, now)
    picked: list[str] = []
    for fetch in round_sizes(limit):
        rows = c.execute(candidates_sql(len(names)),
                         (now, fetch, dumps(sorted(gate.full)), dumps(picked), *names)).fetchall()
        for job_id, key, concurrency, rate_count, rate_per in rows:
            if gate.admit(key, concurrency, (rate_count, rate_per) if rate_count is not None else None):
                picked.append(job_id)
                if len(picked) >= limit:
                    break
        if len(picked) >= limit or len(rows) < fetch:
            break
    return picked, gate
