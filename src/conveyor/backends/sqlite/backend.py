"""SQLite engine: jobs, leases, queue settings and workers in one WAL-mode file.

Layout (see ``schema.sql``): ``jobs`` holds every field of a job plus its lease
(``worker_id``, ``lease_token``, ``lease_expires_at``), ``ready_at`` (while claimable: its place
in line, and when its retention started; kept in ``claimed_ready_at`` while it runs, so that a
job put back without an outcome keeps its place, and ``put_back_at`` then restarts its
retention), ``revision`` and the webhook outbox columns;
``job_deps(child, parent)`` holds the dependency graph; ``queues`` the stored settings;
``workers`` the registry.

Every call runs on the caller's thread (the event loop): each is a handful of prepared
statements that take microseconds, so an executor hop would cost more than it saves. Writes
run in ``BEGIN IMMEDIATE`` transactions, so that the rules which must be atomic with a write
(idempotency, fencing, dependency release and cascade, the webhook outbox) hold across
processes. Lists of ids travel as one JSON parameter (``json_each``) so that each statement
text stays fixed and prepared.

This module is the ``Backend`` itself; beside it: ``connection`` (the URL, opening and migrating
the file, outages), ``statements`` (the SQL), ``rows`` (values to and from columns),
``enqueue`` (what an enqueue writes), ``dependencies`` (release and cascade), ``limits``
(concurrency and rate limits at claim time) and ``listing`` (pages of jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from conveyor.backends import cursors
from conveyor.backends.base import (
    Backend,
    HeartbeatReply,
    JobQuery,
    Lease,
    Outcome,
    Page,
    QueueInfo,
    SweepReport,
    WorkerInfo,
)
from conveyor.backends.sqlite.connection import connect, is_unavailable, path_from_url, unavailable
from conveyor.backends.sqlite.dependencies import ENDED_BADLY, by_parents, cascade
from conveyor.backends.sqlite.enqueue import EnqueuePlan
from conveyor.backends.sqlite.limits import admitted
from conveyor.backends.sqlite.listing import list_sql
from conveyor.backends.sqlite.rows import STATUS, dumps, job_from_row, loads, settings_from_row
from conveyor.backends.sqlite.statements import (
    CLAIM_IDS,
    COLS,
    COUNTS,
    END_ATTEMPT,
    EXTEND,
    FINISH,
    FINISH_TERMINAL,
    FINISHED_QUEUES,
    HEARTBEAT_WORKER,
    IDS,
    INSERT,
    INSERT_DEP,
    LIMITED_READY,
    NCOLS,
    NEXT_DUE,
    PAST_RETENTION,
    READY_QUEUES,
    RELEASE,
    REQUEUE_SET,
    SETTINGS_COLS,
    TERMINAL_SET,
    claim_sql,
)
from conveyor.core.job import (
    CANCELLED_HANDED_BACK,
    CANCELLED_LOST,
    LEASE_LOST,
    PENDING,
    TERMINAL,
    Job,
    Status,
    attempt_status,
    brief_error,
    can_transition,
)
from conveyor.core.queues import QueueSettings

POLL_INTERVAL = 0.002  #: seconds between two looks at ``PRAGMA data_version`` while idle
#: Once this backend has leased no job for ``QUIET_AFTER`` seconds the looks space out to
#: ``QUIET_POLL_INTERVAL``: an idle worker used 4-7 % of a core looking every 2 ms. The first job
#: after a quiet spell waits up to 10 ms; from it on, the looks are 2 ms apart again.
QUIET_AFTER = 1.0
QUIET_POLL_INTERVAL = 0.010
_DEFAULTS = QueueSettings()
_OUTCOMES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.RETRYING, Status.QUEUED})


class SQLiteBackend(Backend):
    """Conveyor's embedded engine: ``sqlite:///conveyor.db`` (relative) or ``sqlite:////abs.db``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_from_url(url)
        self._conn: sqlite3.Connection | None = None
        #: one transaction at a time on the connection that ``enqueue_blocking`` shares
        self._blocking_lock = threading.Lock()
        self._pid = os.getpid()
        #: When a rate-limited job that the last claim left queued may start (wakes ``wait_for_work``).
        self._retry_at: float | None = None
        #: Transactions this backend committed that may make work: its own writes (a job its
        #: process enqueued, a retry it decided) end its ``wait_for_work`` too (``data_version``
        #: counts others' only); its heartbeats and progress reports do not.
        self._commits = 0
        #: When a claim last leased a job (``time.monotonic()``): how often ``wait_for_work`` looks.
        self._leased_at = time.monotonic()

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.url!r})"

    # -- connection -----------------------------------------------------------------------
    async def open(self) -> None:
        """Open the file (creating it), switch to WAL and apply pending migrations."""
        self._connection()

    async def close(self) -> None:
        """Close the connection; the backend may be opened again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` unless the file can be read."""
        with self._read() as c:
            c.execute("SELECT count(*) FROM queues").fetchone()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._conn = connect(self.path)
            except sqlite3.DatabaseError as exc:
                raise unavailable(self.path, exc) from exc
        return self._conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Autocommit reads, with engine outages mapped to ``BackendUnavailable``."""
        try:
            yield self._connection()
        except sqlite3.Error as exc:
            if is_unavailable(exc):
                raise unavailable(self.path, exc) from exc
            raise

    @contextlib.contextmanager
    def _write(self, wakes: bool = True) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error.
        ``wakes``: it may make work (else this process's ``wait_for_work`` goes on waiting)."""
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if wakes:
                self._commits += 1

    # -- submit ---------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """Store ``jobs`` in one transaction (see ``Backend.enqueue``)."""
        return self._enqueue(jobs)

    def enqueue_blocking(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """``enqueue`` for synchronous callers: no event loop runs; threads take turns."""
        with self._blocking_lock:
            if self._pid != os.getpid():  # forked (a pre-forking server): the parent's connection is not ours
                self._conn, self._pid = None, os.getpid()
            return self._enqueue(jobs)

    def close_blocking(self) -> None:
        with self._blocking_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _enqueue(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        if not jobs:
            return []
        now = time.time()
        with self._write() as c:
            plan = EnqueuePlan(c, jobs, now)
            c.executemany(INSERT, plan.rows)
            if plan.deps:
                c.executemany(INSERT_DEP, plan.deps)
        return plan.results

    # -- leasing --------------------------------------------------------------------------
    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: float) -> list[Lease]:
        """Lease up to ``limit`` ready jobs from ``queues`` in one statement."""
        names = list(dict.fromkeys(queues))
        if not names or limit <= 0:
            return []
        with self._write() as c:
            if c.execute(LIMITED_READY, (dumps(names),)).fetchone() is None:
                self._retry_at = None  # no rate window to wait for (a past one would end every wait at once)
                rows = c.execute(claim_sql(len(names)), (now, worker_id, limit, *names)).fetchall()
            else:
                rows = self._claim_limited(c, names, limit, worker_id, now)
        rows.sort(key=lambda r: (-r[6], r[NCOLS], r[0]))  # line order: the claimed_ready_at RETURNING gave
        if rows:
            self._leased_at = time.monotonic()
        return [Lease(job, job.lease_token or "") for job in map(job_from_row, rows)]

    def _claim_limited(self, c: sqlite3.Connection, names: Sequence[str], limit: int, worker_id: str,
                       now: float) -> list[Any]:
        """Claim past the jobs whose key is at its limit (they stay queued); in the caller's transaction."""
        picked, gate = admitted(c, names, limit, now)
        self._retry_at = gate.windows.retry_at
        if not picked:
            return []
        if gate.windows.starts:
            c.executemany("INSERT INTO limit_starts (key, at, until) VALUES (?, ?, ?)", gate.windows.starts)
        return c.execute(CLAIM_IDS, (now, worker_id, dumps(picked))).fetchall()

    async def heartbeat(self, worker: WorkerInfo, leases: Mapping[str, str], now: float) -> HeartbeatReply:
        """Record ``worker`` as alive and extend the leases it still holds."""
        worker_row = (worker.id, worker.host, worker.pid, dumps(list(worker.queues)), worker.concurrency,
                      dumps(list(worker.running)), worker.started_at or now, now)
        lost: set[str] = set(leases)
        cancel: set[str] = set()
        with self._write(wakes=False) as c:
            c.execute(HEARTBEAT_WORKER, worker_row)
            if leases:
                rows = c.execute(f"SELECT id, lease_token, cancel_requested FROM jobs WHERE status = 'running' "
                                 f"AND id IN {IDS.format(n=1)}", (dumps(list(leases)),))
                for job_id, token, cancel_requested in rows:
                    if token == leases[job_id]:
                        lost.discard(job_id)
                        if cancel_requested:
                            cancel.add(job_id)
                held = [job_id for job_id in leases if job_id not in lost]
                if held:
                    c.execute(EXTEND, (now, dumps(held)))
        return HeartbeatReply(lost=frozenset(lost), cancel_requested=frozenset(cancel))

    async def finish(self, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        """Apply the outcomes whose token still holds, with their releases and cascades."""
        if not outcomes:
            return []
        for o in outcomes:
            if o.status not in _OUTCOMES:
                raise ValueError(f"a job cannot finish as {o.status!s}")
        with self._write() as c:
            rows = c.execute(f"SELECT id, lease_token, cancel_requested FROM jobs WHERE status = 'running' "
                             f"AND id IN {IDS.format(n=1)}", (dumps([o.job_id for o in outcomes]),)).fetchall()
            held = {r[0]: r[1] for r in rows}
            flagged = {r[0] for r in rows if r[2]}
            applied = []
            for o in outcomes:
                ok = held.get(o.job_id) == o.token
                if ok:
                    del held[o.job_id]  # a second outcome for one lease in one call is refused
                applied.append(ok)
            # A job cancelled while it ran and then handed back is not run again: it ends cancelled.
            done = [dataclasses.replace(o, status=Status.CANCELLED, error=CANCELLED_HANDED_BACK)
                    if o.status is Status.QUEUED and o.job_id in flagged else o
                    for o, ok in zip(outcomes, applied, strict=True) if ok]
            self._apply_outcomes(c, done, now)
        return applied

    def _apply_outcomes(self, c: sqlite3.Connection, done: Sequence[Outcome], now: float) -> None:
        terminal, other = [], []
        for o in done:
            error = dumps(o.error) if o.error is not None else None
            label = attempt_status(o.status, o.error)
            brief = dumps(brief_error(o.error)) if o.error is not None else None
            if o.status in TERMINAL:
                result = dumps(o.result) if o.status is Status.SUCCEEDED else None
                terminal.append((o.status.value, result, error, o.attempt, None, 0, now, o.job_id, label, brief))
            else:
                retry_at = (o.scheduled_at if o.scheduled_at is not None else now)
                other.append((o.status.value, None, error, o.attempt, retry_at, int(o.uncount_delivery),
                              now, o.job_id, label, brief))
        if terminal:
            c.executemany(FINISH_TERMINAL, terminal)
        if other:
            c.executemany(FINISH, other)
        succeeded = [o.job_id for o in done if o.status is Status.SUCCEEDED]
        if succeeded:
            c.execute(RELEASE, (now, dumps(succeeded)))
        ended = [o.job_id for o in done if o.status in ENDED_BADLY]
        if ended:
            cascade(c, ended, now)

    async def set_progress(self, job_id: str, token: str, progress: Mapping[str, Any], now: float) -> bool:
        """Record progress while ``token`` holds the lease."""
        with self._write(wakes=False) as c:
            cur = c.execute("UPDATE jobs SET progress = ?1, updated_at = ?2, revision = revision + 1 "
                            "WHERE id = ?3 AND lease_token = ?4 AND status = 'running'",
                            (dumps(dict(progress)), now, job_id, token))
        return cur.rowcount == 1

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return once anyone committed (this backend or another process), a delayed job comes
        due, or ``timeout`` passed."""
        # the clock read before ``start``: the wait ends at the due time or just after, never
        # before it (a claim then would find nothing, and the next wait no longer see that job)
        now = time.time()
        start = time.monotonic()
        deadline = start + max(timeout, 0.0)
        commits = self._commits
        with self._read() as c:
            version = c.execute("PRAGMA data_version").fetchone()[0]
            due = self._next_due(c, queues, now)
        if self._retry_at is not None:  # a rate limit's window lets the next job start then
            due = self._retry_at if due is None else min(due, self._retry_at)
        if due is not None:
            deadline = min(deadline, start + max(due - now, 0.0))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                await asyncio.sleep(0)  # a claim never yields either: the loop's signal handlers run
                return
            quiet = time.monotonic() - self._leased_at > QUIET_AFTER
            await asyncio.sleep(min(QUIET_POLL_INTERVAL if quiet else POLL_INTERVAL, left))
            if self._commits != commits:
                return
            with self._read() as c:
                if c.execute("PRAGMA data_version").fetchone()[0] != version:
                    return

    @staticmethod
    def _next_due(c: sqlite3.Connection, queues: Sequence[str], now: float) -> float | None:
        """When the next delayed or retrying job of ``queues`` becomes claimable, if any."""
        times = [c.execute(NEXT_DUE, (name, now, 1)).fetchone()[0] for name in dict.fromkeys(queues)]
        return min((t for t in times if t is not None), default=None)

    # -- reads ----------------------------------------------------------------------------
    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        """The stored jobs among ``ids``, in the order asked."""
        if not ids:
            return []
        with self._read() as c:
            rows = c.execute(f"SELECT {COLS} FROM jobs WHERE id IN {IDS.format(n=1)}",
                             (dumps(list(ids)),)).fetchall()
        found = {r[0]: r for r in rows}
        return [job_from_row(found[i]) for i in dict.fromkeys(ids) if i in found]

    async def list_jobs(self, query: JobQuery) -> Page:
        """Newest first; the cursor is the last id of the previous page."""
        limit = max(1, query.limit)
        after = cursors.decode_job_id(query.cursor) if query.cursor else None
        with self._read() as c:
            sql, params = list_sql(c, query, after, limit + 1)
            rows = c.execute(sql, params).fetchall()
        items = [job_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items=items, next_cursor=cursors.encode_job_id(items[-1].id) if more and items else None)

    async def revisions(self, ids: Sequence[str]) -> dict[str, int]:
        """``{id: revision}`` of the known jobs among ``ids``."""
        if not ids:
            return {}
        with self._read() as c:
            return dict(c.execute(f"SELECT id, revision FROM jobs WHERE id IN {IDS.format(n=1)}",
                                  (dumps(list(ids)),)).fetchall())

    # -- admin ----------------------------------------------------------------------------
    async def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancel a pending job (and its dependents) at once; flag a running one."""
        with self._write() as c:
            row = c.execute("SELECT status, cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            status = STATUS[row[0]]
            if status in PENDING:
                c.execute(f"UPDATE jobs SET status = 'cancelled', {TERMINAL_SET.format(now=1)} WHERE id = ?2",
                          (now, job_id))
                cascade(c, [job_id], now)
            elif status is Status.RUNNING and not row[1]:
                c.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ?1, revision = revision + 1 "
                          "WHERE id = ?2", (now, job_id))
            job = c.execute(f"SELECT {COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(job)

    async def requeue(self, queue: str | None, ids: Sequence[str] | None, statuses: Sequence[Status],
                      now: float) -> list[Job]:
        """Put jobs in ``statuses`` (of ``queue`` and/or among ``ids``) back: ``queued``, or
        ``waiting`` while a parent is pending. A job of ``ids`` whose parent ended badly refuses
        the call (``InvalidTransition``); a whole queue's redrive leaves such jobs failed."""
        allowed = [str(s) for s in dict.fromkeys(statuses) if can_transition(Status(s), Status.QUEUED)]
        if not allowed or (ids is not None and not ids):
            return []
        where, params = [f"status IN {IDS.format(n=2)}"], [now, dumps(allowed)]
        if queue is not None:
            params.append(queue)
            where.append(f"queue = ?{len(params)}")
        if ids is not None:
            params.append(dumps(list(ids)))
            where.append(f"id IN {IDS.format(n=len(params))}")
        with self._write() as c:  # (the parents are read and the jobs moved under one write lock)
            found = c.execute(f"SELECT id, depends_on FROM jobs WHERE {' AND '.join(where)}", params).fetchall()
            ready, waiting = by_parents(c, found, refuse=ids is not None)
            rows = []
            for status, ready_at, chosen in (("'queued'", "?1", ready), ("'waiting'", "NULL", waiting)):
                if chosen:
                    rows += c.execute(f"UPDATE jobs SET {REQUEUE_SET.format(status=status, ready_at=ready_at)} "
                                      f"WHERE id IN {IDS.format(n=2)} RETURNING {COLS}",
                                      (now, dumps(chosen))).fetchall()
        return sorted(map(job_from_row, rows), key=lambda j: j.id)

    async def purge(self, queue: str, now: float) -> int:
        """Cancel every ready job of ``queue`` (and their dependents)."""
        with self._write() as c:
            rows = c.execute(f"UPDATE jobs SET status = 'cancelled', {TERMINAL_SET.format(now=1)} "
                             "WHERE queue = ?2 AND ready_at IS NOT NULL RETURNING id", (now, queue)).fetchall()
            purged = [r[0] for r in rows]
            if purged:
                cascade(c, purged, now)
        return len(purged)

    async def queue_settings(self, name: str) -> QueueSettings:
        """Stored settings of ``name``, or the defaults."""
        with self._read() as c:
            row = c.execute(f"SELECT {SETTINGS_COLS} FROM queues WHERE name = ?", (name,)).fetchone()
        return settings_from_row(row) if row is not None else _DEFAULTS

    async def save_queue_settings(self, name: str, settings: QueueSettings,
                                  fields: Collection[str] | None = None) -> None:
        """Store the settings of ``name`` (with ``fields``, only those: a new queue's row gets
        ``settings`` whole, an existing one just the named columns)."""
        row = (name, settings.retention, settings.visibility_timeout, settings.max_deliveries,
               settings.result_ttl, int(settings.paused))
        with self._write() as c:
            if fields is None:
                c.execute(f"INSERT OR REPLACE INTO queues ({SETTINGS_COLS}) VALUES (?, ?, ?, ?, ?, ?)", row)
                return
            c.execute(f"INSERT OR IGNORE INTO queues ({SETTINGS_COLS}) VALUES (?, ?, ?, ?, ?, ?)", row)
            named = [f for f in SETTINGS_COLS.split(", ")[1:] if f in fields]
            if named:
                c.execute(f"UPDATE queues SET {', '.join(f'{f} = ?' for f in named)} WHERE name = ?",
                          (*(getattr(settings, f) for f in named), name))

    async def queues(self, names: Sequence[str] | None = None) -> list[QueueInfo]:
        """Queues with stored settings or jobs (or ``names``), with counts per status."""
        with self._read() as c:
            settings = {r[0]: settings_from_row(r) for r in c.execute(f"SELECT {SETTINGS_COLS} FROM queues")}
            counts: dict[str, dict[str, int]] = {}
            for queue, status, n in c.execute(COUNTS):
                counts.setdefault(queue, {})[status] = n
        for per_status in counts.values():  # succeeded = finished - the terminal statuses counted apart
            finished = per_status.pop("finished", 0)
            succeeded = finished - sum(per_status.get(s, 0) for s in ("failed", "cancelled", "expired"))
            if succeeded:
                per_status["succeeded"] = succeeded
        wanted = sorted(set(settings) | set(counts)) if names is None else list(dict.fromkeys(names))
        return [QueueInfo(name=n, settings=settings.get(n, _DEFAULTS), counts=counts.get(n, {})) for n in wanted]

    # -- webhooks -------------------------------------------------------------------------
    async def due_webhooks(self, now: float, limit: int, lease: float) -> list[tuple[Job, int]]:
        """Pending deliveries due by ``now``, each hidden from other callers for ``lease`` seconds."""
        with self._write() as c:
            rows = c.execute(
                "UPDATE jobs SET webhook_next_at = ?1 + ?2 WHERE id IN (SELECT id FROM jobs "
                "WHERE webhook_next_at <= ?1 ORDER BY webhook_next_at LIMIT ?3) "
                f"RETURNING {COLS}, webhook_attempts", (now, lease, limit)).fetchall()
        rows.sort(key=lambda r: r[0])
        return [(job_from_row(r), r[NCOLS]) for r in rows]

    async def webhook_attempted(self, job_id: str, delivered: bool, next_at: float | None) -> None:
        """Count an attempt; the delivery is done when ``delivered`` or ``next_at`` is ``None``."""
        state = "delivered" if delivered else ("gave_up" if next_at is None else "pending")
        with self._write() as c:
            c.execute("UPDATE jobs SET webhook_attempts = webhook_attempts + 1, webhook_state = ?1, "
                      "webhook_next_at = ?2 WHERE id = ?3 AND webhook_state = 'pending'",
                      (state, next_at if state == "pending" else None, job_id))

    # -- housekeeping and registry --------------------------------------------------------
    async def sweep(self, now: float, limit: int = 500) -> SweepReport:
        """Expired leases, retention, result_ttl and dead workers; each step its own transaction."""
        with self._read() as c:
            settings = {r[0]: settings_from_row(r) for r in c.execute(f"SELECT {SETTINGS_COLS} FROM queues")}
            ready_queues = [r[0] for r in c.execute(READY_QUEUES)]
            finished_queues = [r[0] for r in c.execute(FINISHED_QUEUES)]
        requeued, dead = self._sweep_leases(now, limit)
        expired = self._sweep_retention(ready_queues, settings, now, limit)
        deleted = self._sweep_finished(finished_queues, settings, now, limit)
        with self._write() as c:
            dropped = c.execute("DELETE FROM workers WHERE last_heartbeat < ?",
                                (now - self.WORKER_TTL,)).rowcount
            c.execute("DELETE FROM limit_starts WHERE rowid IN (SELECT rowid FROM limit_starts WHERE until < ?1 "
                      "LIMIT ?2)", (now, limit))
        return SweepReport(requeued=requeued, dead=dead, expired=expired, deleted=deleted,
                           workers_dropped=dropped)

    def _sweep_leases(self, now: float, limit: int) -> tuple[int, int]:
        """Expired leases: back to queued, failed at the delivery limit, cancelled when a user asked."""
        with self._write() as c:
            rows = c.execute(
                "SELECT j.id, j.deliveries, coalesce(q.max_deliveries, ?2), j.cancel_requested FROM jobs j "
                "LEFT JOIN queues q ON q.name = j.queue WHERE j.status = 'running' AND j.lease_expires_at < ?1 "
                "ORDER BY j.lease_expires_at LIMIT ?3", (now, _DEFAULTS.max_deliveries, limit)).fetchall()
            cancelled = [r[0] for r in rows if r[3]]  # cancellation is stored: never run it again
            back = [r[0] for r in rows if r[1] < r[2] and not r[3]]
            dead = [(dumps({"type": "DeliveryLimitExceeded",
                            "message": f"delivered {r[1]} times without finishing "
                                       f"(lease expired; max_deliveries {r[2]})"}),
                     now, r[0]) for r in rows if r[1] >= r[2] and not r[3]]
            if cancelled:
                c.execute(f"UPDATE jobs SET status = 'cancelled', error = ?3, {TERMINAL_SET.format(now=1)}, "
                          f"{END_ATTEMPT.format(now=1, st=4, err=5)} WHERE id IN {IDS.format(n=2)}",
                          (now, dumps(cancelled), dumps(CANCELLED_LOST), "cancelled",
                           dumps(brief_error(CANCELLED_LOST))))
            lost = dumps(LEASE_LOST)
            if back:
                c.execute("UPDATE jobs SET status = 'queued', ready_at = coalesce(claimed_ready_at, ?1), "
                          "put_back_at = ?1, updated_at = ?1, revision = revision + 1, "
                          "worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, "
                          f"{END_ATTEMPT.format(now=1, st=3, err=4)} "
                          f"WHERE id IN {IDS.format(n=2)}", (now, dumps(back), "lost", lost))
            if dead:
                c.executemany(f"UPDATE jobs SET status = 'failed', error = ?1, {TERMINAL_SET.format(now=2)}, "
                              f"{END_ATTEMPT.format(now=2, st=4, err=5)} WHERE id = ?3",
                              [(*d, "lost", lost) for d in dead])
            if dead or cancelled:
                cascade(c, [d[2] for d in dead] + cancelled, now)
        return len(back), len(dead)

    def _sweep_retention(self, queues: Sequence[str], settings: Mapping[str, QueueSettings], now: float,
                         limit: int) -> int:
        total = 0
        for name in queues:
            if total >= limit:
                break
            retention = settings.get(name, _DEFAULTS).retention
            with self._write() as c:
                rows = c.execute(
                    f"UPDATE jobs SET status = 'expired', {TERMINAL_SET.format(now=1)} "
                    f"WHERE id IN ({PAST_RETENTION}) RETURNING id",
                    (now, name, now - retention, limit - total)).fetchall()
                if rows:
                    cascade(c, [r[0] for r in rows], now)
            total += len(rows)
        return total

    def _sweep_finished(self, queues: Sequence[str], settings: Mapping[str, QueueSettings], now: float,
                        limit: int) -> int:
        total = 0
        for name in queues:
            if total >= limit:
                break
            ttl = settings.get(name, _DEFAULTS).result_ttl
            with self._write() as c:
                # A record whose webhook is still to be sent stays until the outbox is done with it.
                rows = c.execute(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE queue = ?1 AND finished_at < ?2 "
                    "AND webhook_next_at IS NULL LIMIT ?3) RETURNING id",
                    (name, now - ttl, limit - total)).fetchall()
                if rows:
                    gone = dumps([r[0] for r in rows])
                    c.execute(f"DELETE FROM job_deps WHERE child IN {IDS.format(n=1)}", (gone,))
                    c.execute(f"DELETE FROM job_deps WHERE parent IN {IDS.format(n=1)}", (gone,))
            total += len(rows)
        return total

    async def unregister_worker(self, worker_id: str) -> None:
        """Drop a worker that stopped cleanly."""
        with self._write() as c:
            c.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    async def workers(self, now: float) -> list[WorkerInfo]:
        """Workers heard from within ``WORKER_TTL``."""
        with self._read() as c:
            rows = c.execute("SELECT id, host, pid, queues, concurrency, running, started_at, last_heartbeat "
                             "FROM workers WHERE last_heartbeat >= ? ORDER BY id", (now - self.WORKER_TTL,))
            return [WorkerInfo(id=r[0], host=r[1], pid=r[2], queues=tuple(loads(r[3])), concurrency=r[4],
                               running=tuple(loads(r[5])), started_at=r[6], last_heartbeat=r[7]) for r in rows]


__all__ = ["SQLiteBackend", "path_from_url"]
