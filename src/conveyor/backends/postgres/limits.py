"""Claims of limited jobs: which candidates their key's concurrency and rate limits admit.

A claim whose candidates include jobs with a ``limit_key`` decides them in one transaction with a
:class:`Gate`: it looks past the jobs whose key is at its limit (they stay queued) in a few rounds
of growing size, counts each key's running jobs and recent starts under an advisory lock, and
records the starts it admits into rate windows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.claim_limits import RateWindows, round_sizes
from conveyor.backends.postgres.connection import AConn

if TYPE_CHECKING:
    from conveyor.backends.postgres.backend import PostgresBackend

class Gate:
    """Admits limited jobs while their key has a free slot and room in its rate window.

    Each key is decided under a transaction-level advisory lock (``limit_lock``), so that two
    claimers never both take its last slot; a key locked by another claimer is skipped.
    """

    def __init__(self, backend: PostgresBackend, conn: AConn, now: float) -> None:
        # a start counts from when it happened: a claim that waited for a connection runs after its ``now``
        self.backend, self.conn, self.now = backend, conn, max(now, time.time())
        self.full: set[str] = set()
        self.running: dict[str, int] = {}
        self.windows = RateWindows(self.now)  #: its starts are the rows for limit_starts

    async def pick(self, queues: Sequence[str], limit: int, now: float) -> list[str]:
        """The ids of up to ``limit`` candidates of ``queues`` (claimable at ``now``) that their
        keys admit, looking past those whose key is at its limit."""
        picked: list[str] = []
        for fetch in round_sizes(limit):
            rows = await self.backend._fetch("claim_candidates", {"queues": queues, "limit": fetch,
                                                                  "now": now, "full": sorted(self.full),
                                                                  "picked": picked}, self.conn)
            if self.full:  # looking past keys at their limits
                await self.prefetch(rows)
            for job_id, key, concurrency, rate in rows:
                if await self.admit(key, concurrency, rate):
                    picked.append(job_id)
                    if len(picked) >= limit:
                        break
            if len(picked) >= limit or len(rows) < fetch:
                break
        return picked

    async def log_starts(self) -> None:
        """Record the starts admitted into rate windows (in the claim's transaction)."""
        starts = self.windows.starts
        if starts:
            await self.backend._fetch("log_starts", {"keys": [s[0] for s in starts],
                                                     "ats": [s[1] for s in starts],
                                                     "untils": [s[2] for s in starts]}, self.conn)

    async def _one(self, name: str, params: Mapping[str, Any]) -> Any:
        [row] = await self.backend._fetch(name, params, self.conn)
        return row

    async def prefetch(self, rows: Sequence[Any]) -> None:
        """Lock and count the new keys of a round's candidate ``rows`` in two round trips, rather
        than two or three per key in ``admit`` (a claim may look past hundreds of full keys).
        Only from a claim's second round on: the first locks just the keys it decides on, so
        that claimers at the same moment skip as few keys as they can."""
        keys = sorted({r[1] for r in rows if r[1] is not None and r[1] not in self.running and r[1] not in self.full})
        if keys:
            params = {"keys": keys, "lock_prefix": self._lock_prefix}
            gates = await self.backend._fetch("limit_gates", params, self.conn)
            for key, got, running in gates:
                if got:
                    self.running[key] = int(running)
                else:
                    self.full.add(key)
        pairs = sorted({(r[1], float(r[3][1])) for r in rows
                        if r[1] is not None and r[3] is not None and r[1] not in self.full
                        and (r[1], float(r[3][1])) not in self.windows})
        if pairs:
            windows = await self.backend._fetch("limit_windows", {
                "keys": [k for k, _ in pairs], "pers": [p for _, p in pairs], "now": self.now}, self.conn)
            for key, per, n, oldest in windows:
                self.windows.counted(key, float(per), int(n), oldest)

    @property
    def _lock_prefix(self) -> str:
        return f"conveyor:{self.backend.schema}:"

    async def admit(self, key: str | None, concurrency: int | None, rate: Sequence[Any] | None) -> bool:
        """Whether a job of ``key`` may start now; if so, it counts against the key's limits."""
        if key is None:
            return True
        if key in self.full:
            return False
        if key not in self.running:
            (got,) = await self._one("limit_lock", {"lock": f"{self._lock_prefix}{key}"})
            if not got:
                self.full.add(key)
                return False
            (n,) = await self._one("limit_running", {"key": key})
            self.running[key] = int(n)
        if concurrency is not None and self.running[key] >= concurrency:
            self.full.add(key)
            return False
        if rate is not None and not await self._rate_allows(key, int(rate[0]), float(rate[1])):
            return False
        self.running[key] += 1
        return True

    async def _rate_allows(self, key: str, count: int, per: float) -> bool:
        if (key, per) not in self.windows:
            n, oldest = await self._one("limit_starts", {"key": key, "since": self.now - per})
            self.windows.counted(key, per, int(n), oldest)
        if not self.windows.take(key, count, per):
            self.full.add(key)
            return False
        return True

