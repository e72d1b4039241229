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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

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
    invalid_cursor,
)
from conveyor.core import rules
from conveyor.core.errors import BackendUnavailable, ConfigurationError, ValidationError
from conveyor.core.ids import job_id_of
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

BUSY_TIMEOUT = 5.0  #: seconds a statement waits for another process's write lock
POLL_INTERVAL = 0.002  #: seconds between two looks at ``PRAGMA data_version`` while idle
_DEFAULTS = QueueSettings()
#: ``conveyor.serialization``'s JSON format (compact, no NaN, non-JSON refused), with the
#: encoder built once rather than per value: enqueue and claim encode and decode every field.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_decode = json.JSONDecoder().decode


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return _decode(text)


_STATUS: dict[str, Status] = {s.value: s for s in Status}
_ENDED_BADLY = frozenset({Status.FAILED, Status.CANCELLED, Status.EXPIRED})
_OUTCOMES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.RETRYING, Status.QUEUED})

# Engine errors that mean "the file cannot be used right now", as opposed to a bug in a query.
_UNAVAILABLE_CODES = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH,
})

# -- SQL --------------------------------------------------------------------------------------
_PENDING_SQL = "('waiting', 'scheduled', 'queued', 'retrying')"

#: The columns that make a ``Job``, in the order ``_job()`` reads them.
_COLS = ("id, task, queue, status, args, kwargs, priority, progress, result, error, attempt, "
         "max_retries, timeout, depends_on, idempotency_key, metadata, webhook, created_at, "
         "scheduled_at, started_at, finished_at, updated_at, deliveries, cancel_requested, revision, "
         "worker_id, lease_token, lease_expires_at, limit_key, concurrency_limit, rate_count, rate_per, attempts")
_NCOLS = _COLS.count(",") + 1

#: Most index ranges one listing merges (SQLite allows 500 terms in one compound SELECT).
_MAX_RANGES = 200

#: A job id list passed as one JSON array parameter.
_IDS = "(SELECT value FROM json_each(?{n}))"

#: The lease a claim or heartbeat hands out: the queue's visibility timeout from ``now``.
_LEASE_END = (f"?{{now}} + COALESCE((SELECT q.visibility_timeout FROM queues q WHERE q.name = jobs.queue), "
              f"{_DEFAULTS.visibility_timeout})")

#: SET clause of every change that makes a job terminal at ``?{now}``: the lease ends, the
#: outbox gets a pending delivery when the job has a webhook.
_TERMINAL_SET = (
    "finished_at = ?{now}, updated_at = ?{now}, revision = revision + 1, ready_at = NULL, "
    "worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, "
    "webhook_state = CASE WHEN webhook IS NULL THEN webhook_state ELSE 'pending' END, "
    "webhook_next_at = CASE WHEN webhook IS NULL THEN webhook_next_at ELSE ?{now} END, "
    "webhook_attempts = CASE WHEN webhook IS NULL THEN webhook_attempts ELSE 0 END"
)

_INSERT = (
    "INSERT INTO jobs (id, task, queue, status, args, kwargs, priority, progress, result, error, attempt, "
    "max_retries, timeout, depends_on, idempotency_key, metadata, webhook, created_at, scheduled_at, "
    "finished_at, updated_at, ready_at, revision, webhook_state, webhook_next_at, limit_key, concurrency_limit, "
    "rate_count, rate_per) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)"
)

#: The timeline entry of the delivery that ends: its end ``?{now}``, label ``?{st}``, error ``?{err}``.
_END_ATTEMPT = (
    "attempts = CASE WHEN json_extract(attempts, '$[#-1].status') = 'running' THEN json_set(attempts, "
    "'$[#-1].finished_at', ?{now}, '$[#-1].status', ?{st}, '$[#-1].error', json(?{err})) ELSE attempts END"
)
#: A new timeline entry for a delivery to worker ``?2`` starting at ``?1`` (the last 50 kept).
_NEW_ATTEMPT = (
    "attempts = (SELECT CASE WHEN json_array_length(a) > 50 THEN json_remove(a, '$[0]') ELSE a END FROM "
    "(SELECT json_insert(coalesce(attempts, '[]'), '$[#]', json_object('attempt', attempt, 'worker_id', ?2, "
    "'started_at', ?1, 'finished_at', NULL, 'status', 'running', 'error', NULL)) AS a))"
)
#: The SET clause of a claim at ``?1`` by worker ``?2`` (its place in line kept for a put-back).
_LEASE_SET = (
    f"status = 'running', lease_token = {{token}}, worker_id = ?2, ready_at = NULL, claimed_ready_at = ready_at, "
    f"lease_expires_at = {_LEASE_END.format(now=1)}, started_at = ?1, updated_at = ?1, "
    f"deliveries = deliveries + 1, revision = revision + 1, {_NEW_ATTEMPT}"
)
_INSERT_DEP = "INSERT OR IGNORE INTO job_deps (child, parent) VALUES (?, ?)"

_FINISH = (
    "UPDATE jobs SET status = ?1, "
    "result = CASE ?1 WHEN 'succeeded' THEN ?2 WHEN 'queued' THEN result ELSE NULL END, "
    "error = CASE ?1 WHEN 'succeeded' THEN NULL WHEN 'queued' THEN error ELSE ?3 END, "  # lost: in the timeline
    "attempt = coalesce(?4, attempt), "
    "scheduled_at = CASE ?1 WHEN 'retrying' THEN ?5 ELSE scheduled_at END, "
    "ready_at = CASE ?1 WHEN 'retrying' THEN ?5 WHEN 'queued' THEN coalesce(claimed_ready_at, ?7) ELSE ready_at END, "
    "put_back_at = CASE ?1 WHEN 'queued' THEN ?7 ELSE put_back_at END, "
    "deliveries = max(deliveries - ?6, 0), "
    "finished_at = NULL, updated_at = ?7, revision = revision + 1, "
    "worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, "
    + _END_ATTEMPT.format(now=7, st=9, err=10) + " WHERE id = ?8"
)
_FINISH_TERMINAL = (
    "UPDATE jobs SET status = ?1, result = ?2, error = ?3, attempt = coalesce(?4, attempt), "
    + _TERMINAL_SET.format(now=7) + ", " + _END_ATTEMPT.format(now=7, st=9, err=10) + " WHERE id = ?8"
)

#: Waiting children of ``?2`` whose parents all succeeded become ready.
_RELEASE = (
    "UPDATE jobs SET status = CASE WHEN scheduled_at > ?1 THEN 'scheduled' ELSE 'queued' END, "
    "ready_at = max(?1, coalesce(scheduled_at, ?1)), updated_at = ?1, revision = revision + 1 "
    f"WHERE id IN (SELECT child FROM job_deps WHERE parent IN {_IDS.format(n=2)}) "
    "AND status = 'waiting' AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent "
    "WHERE d.child = jobs.id AND p.status <> 'succeeded')"
)

#: Pending children of ``?2`` (which ended badly) are cancelled, each naming its parent.
_CASCADE = (
    "UPDATE jobs SET status = 'cancelled', "
    "error = json_object('type', 'DependencyFailed', 'message', 'parent ' || d.parent || ' ended ' || d.ended), "
    + _TERMINAL_SET.format(now=1)
    + " FROM (SELECT dd.child AS child, min(dd.parent) AS parent, p.status AS ended "
    f"FROM job_deps dd JOIN jobs p ON p.id = dd.parent WHERE dd.parent IN {_IDS.format(n=2)} "
    f"GROUP BY dd.child) AS d WHERE jobs.id = d.child AND jobs.status IN {_PENDING_SQL} RETURNING jobs.id"
)

_HEARTBEAT_WORKER = (
    "INSERT INTO workers (id, host, pid, queues, concurrency, running, started_at, last_heartbeat) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
    "queues = excluded.queues, concurrency = excluded.concurrency, running = excluded.running, "
    "last_heartbeat = excluded.last_heartbeat"
)
_EXTEND = f"UPDATE jobs SET lease_expires_at = {_LEASE_END.format(now=1)} WHERE id IN {_IDS.format(n=2)}"

#: A retry or redrive at ``?1``: ``{status}`` is 'queued', or 'waiting' (``{ready_at}`` NULL) for a
#: job with a pending parent.
_REQUEUE_SET = (
    "status = {status}, attempt = 1, deliveries = 0, error = NULL, result = NULL, progress = NULL, "
    "scheduled_at = NULL, started_at = NULL, finished_at = NULL, cancel_requested = 0, ready_at = {ready_at}, "
    "worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, webhook_state = NULL, "
    "webhook_attempts = 0, webhook_next_at = NULL, updated_at = ?1, revision = revision + 1"
)

_SETTINGS_COLS = "name, retention, visibility_timeout, max_deliveries, result_ttl, paused"

#: The statuses off the hot path, indexed by ``jobs_cold`` (this text must match the index's).
_COLD = "status NOT IN ('queued', 'running', 'succeeded')"
_COLD_STATUSES = tuple(s for s in Status if s not in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED))


def _queue_names(where: str) -> str:
    """The distinct queues of the jobs matching ``where``: one index seek per queue, not a scan."""
    return (
        f"WITH RECURSIVE q(name) AS (SELECT (SELECT min(queue) FROM jobs WHERE {where}) UNION ALL "
        f"SELECT (SELECT min(queue) FROM jobs WHERE {where} AND queue > q.name) FROM q WHERE q.name IS NOT NULL) "
        "SELECT name FROM q WHERE name IS NOT NULL"
    )


_READY_QUEUES = _queue_names("ready_at IS NOT NULL")
_FINISHED_QUEUES = _queue_names("finished_at IS NOT NULL")
_COLD_QUEUES = _queue_names(_COLD)
#: Jobs per queue and status, each count from the index that holds that status.
_COUNTS = (
    "SELECT queue, 'queued', count(*) FROM jobs WHERE ready_at IS NOT NULL AND status = 'queued' GROUP BY queue "
    "UNION ALL SELECT queue, 'running', count(*) FROM jobs WHERE lease_expires_at IS NOT NULL GROUP BY queue "
    f"UNION ALL SELECT queue, status, count(*) FROM jobs WHERE {_COLD} GROUP BY queue, status "
    "UNION ALL SELECT queue, 'finished', count(*) FROM jobs WHERE finished_at IS NOT NULL GROUP BY queue"
)

#: A fresh random UUIDv4 per row, computed by the engine (no Python call per claimed job).
_NEW_TOKEN = (
    "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))"
)

#: The ready jobs of queue ``?{q}`` at priority ``p``, in claim order, ``{cond}`` holding.
_BY_PRIORITY = ("SELECT * FROM (SELECT id, ready_at FROM jobs WHERE queue = ?{q} AND priority = {p} "
                "AND ready_at IS NOT NULL AND {cond} ORDER BY ready_at, id LIMIT ?{limit})")


def _per_priority(q: int, cond: str, limit: int) -> str:
    """One index range per priority 9→0 of one queue (SQLite cannot skip through the index alone)."""
    return " UNION ALL ".join(_BY_PRIORITY.format(q=q, p=p, cond=cond, limit=limit) for p in range(9, -1, -1))


#: Ready jobs of queue ``?2`` that became ready (or were put back) before ``?3``: at most ``?4``.
_PAST_RETENTION = ("SELECT id FROM ("
                   f"{_per_priority(2, 'ready_at < ?3 AND (put_back_at IS NULL OR put_back_at < ?3)', 4)}) LIMIT ?4")
#: The earliest time after ``?2`` at which a job of queue ``?1`` becomes ready (none while it is paused).
_NEXT_DUE = (f"SELECT min(ready_at) FROM ({_per_priority(1, 'ready_at > ?2', 3)}) "
             "WHERE NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused)")


def _claim_sql(n_queues: int) -> str:
    """One statement that leases up to ``?3`` jobs from ``n_queues`` queues (``?4``, ``?5``, ...)."""
    per_queue = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, priority, ready_at FROM jobs WHERE queue = ?{4 + i} "
        "AND ready_at IS NOT NULL AND (status = 'queued' OR ready_at <= ?1) "
        f"AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?{4 + i} AND paused) "
        "ORDER BY priority DESC, ready_at, id LIMIT ?3)"
        for i in range(n_queues)
    )
    return (
        f"UPDATE jobs SET {_LEASE_SET.format(token=_NEW_TOKEN)} "
        f"WHERE id IN (SELECT id FROM ({per_queue}) ORDER BY priority DESC, ready_at, id LIMIT ?3) "
        f"RETURNING {_COLS}, claimed_ready_at"
    )


#: Is any limited job ready in the queues of the JSON list ``?1``? (``jobs_limit_ready``)
_LIMITED_READY = ("SELECT 1 FROM jobs WHERE queue IN (SELECT value FROM json_each(?1)) "
                  "AND limit_key IS NOT NULL AND ready_at IS NOT NULL LIMIT 1")
#: Lease the ready jobs among the JSON list of ids ``?3``.
_CLAIM_IDS = (f"UPDATE jobs SET {_LEASE_SET.format(token=_NEW_TOKEN)} "
              f"WHERE id IN {_IDS.format(n=3)} AND ready_at IS NOT NULL RETURNING {_COLS}, claimed_ready_at")
_RUNNING_OF_KEY = "SELECT count(*) FROM jobs WHERE limit_key = ?1 AND lease_expires_at IS NOT NULL"
_STARTS_OF_KEY = "SELECT count(*), min(at) FROM limit_starts WHERE key = ?1 AND at > ?2"


def _candidates_sql(n_queues: int) -> str:
    """Up to ``?2`` claimable jobs of queues ``?5``, ... in claim order, with their limits.

    Jobs of the keys in the JSON list ``?3`` (full) and the ids in ``?4`` (picked) are left out.
    """
    per_queue = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, priority, ready_at, limit_key, concurrency_limit, rate_count, rate_per "
        f"FROM jobs WHERE queue = ?{5 + i} AND ready_at IS NOT NULL AND (status = 'queued' OR ready_at <= ?1) "
        f"AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?{5 + i} AND paused) "
        f"AND (limit_key IS NULL OR limit_key NOT IN {_IDS.format(n=3)}) AND id NOT IN {_IDS.format(n=4)} "
        "ORDER BY priority DESC, ready_at, id LIMIT ?2)"
        for i in range(n_queues)
    )
    return (f"SELECT id, limit_key, concurrency_limit, rate_count, rate_per FROM ({per_queue}) "
            "ORDER BY priority DESC, ready_at, id LIMIT ?2")


#: Rounds of candidates one limited claim looks at (each skips the keys found full), and the most
#: rows one round reads: rounds read 4x more each, so thousands of keys at their limit ahead of a
#: job do not keep it waiting (about 18,000 looked past in all).
_LIMIT_ROUNDS = 8
_MAX_FETCH = 4096


class _Gate:
    """Admits limited jobs while their key has a free slot and room in its rate window."""

    def __init__(self, c: sqlite3.Connection, now: float) -> None:
        self.c = c
        # a start counts from when it happened: a claim that waited for the write lock runs after its ``now``
        self.now = max(now, time.time())
        self.full: set[str] = set()
        self.running: dict[str, int] = {}
        self.window: dict[tuple[str, float], list[float]] = {}  #: (key, per) -> [starts, oldest]
        self.starts: list[tuple[str, float, float]] = []  #: rows for limit_starts
        self.retry_at: float | None = None

    def admit(self, key: str | None, concurrency: int | None, rate: tuple[int, float] | None) -> bool:
        if key is None:
            return True
        if key in self.full:
            return False
        running = self.running.get(key)
        if running is None:
            running = self.running[key] = self.c.execute(_RUNNING_OF_KEY, (key,)).fetchone()[0]
        if concurrency is not None and running >= concurrency:
            self.full.add(key)
            return False
        if rate is not None:
            count, per = rate
            w = self.window.get((key, per))
            if w is None:
                n, oldest = self.c.execute(_STARTS_OF_KEY, (key, self.now - per)).fetchone()
                w = self.window[(key, per)] = [n, oldest if oldest is not None else self.now]
            if w[0] >= count:
                self.full.add(key)
                at = w[1] + per
                self.retry_at = at if self.retry_at is None else min(self.retry_at, at)
                return False
            w[0] += 1
            self.starts.append((key, self.now, self.now + per))
        self.running[key] = running + 1
        return True


def _job(r: Sequence[Any]) -> Job:
    """A ``Job`` from a row of ``_COLS``."""
    return Job(
        id=r[0], task=r[1], queue=r[2], status=_STATUS[r[3]], args=_loads(r[4]), kwargs=_loads(r[5]),
        priority=r[6], progress=_loads(r[7]), result=_loads(r[8]), error=_loads(r[9]), attempt=r[10],
        max_retries=r[11], timeout=r[12], depends_on=_loads(r[13]), idempotency_key=r[14],
        metadata=_loads(r[15]), webhook=r[16], created_at=r[17], scheduled_at=r[18], started_at=r[19],
        finished_at=r[20], updated_at=r[21], deliveries=r[22], cancel_requested=bool(r[23]),
        revision=r[24], worker_id=r[25], lease_token=r[26], lease_expires_at=r[27], limit_key=r[28],
        concurrency_limit=r[29], rate_limit=(r[30], r[31]) if r[30] is not None else None,
        attempts=_loads(r[32]) or (),
    )


def _settings(r: Sequence[Any]) -> QueueSettings:
    return QueueSettings(retention=r[1], visibility_timeout=r[2], max_deliveries=r[3], result_ttl=r[4],
                         paused=bool(r[5]))


def _json_or_empty(value: Any, empty: str) -> str:
    return _dumps(value) if value else empty


def path_from_url(url: str) -> str:
    """The file of ``sqlite:///relative.db`` or ``sqlite:////abs/path.db`` (``:memory:`` too)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {url!r}")
    if parts.query:  # e.g. '?mode=ro' would silently open the file read-write
        raise ConfigurationError(f"the SQLite URL {url!r} takes no options: use sqlite:///path/to/file.db")
    path = unquote(parts.netloc + parts.path)
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ConfigurationError(f"the SQLite URL {url!r} names no file: use sqlite:///conveyor.db")
    return path


def _migrations() -> list[tuple[int, list[str]]]:
    """The numbered migrations of ``schema.sql``, each as its list of statements."""
    text = resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")
    chunks = re.split(r"^-- migration: (\d+)\s*$", text, flags=re.MULTILINE)
    out = []
    for number, body in zip(chunks[1::2], chunks[2::2], strict=True):
        statements = [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE)]
        out.append((int(number), [s for s in statements if _has_code(s)]))
    if [n for n, _ in out] != list(range(1, len(out) + 1)):
        raise RuntimeError("schema.sql migrations must be numbered 1, 2, 3, ... in order")
    return out


def _has_code(statement: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())


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

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.url!r})"

    # -- connection -----------------------------------------------------------------------
    async def open(self) -> None:
        """Open the file (creating it), switch to WAL and apply pending migrations."""
        self._connection()

    def twin(self) -> Backend | None:
        return None if self.path == ":memory:" else super().twin()  # a new connection: a new database

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
                self._conn = self._connect()
            except sqlite3.DatabaseError as exc:
                raise self._unavailable(exc) from exc
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        """A connection in WAL mode on a migrated file. Switching a file to WAL fails at once,
        without waiting, while another connection writes in the old journal mode (processes
        that open a new file together): that is retried until ``BUSY_TIMEOUT``."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        pause = 0.001
        while True:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False, cached_statements=256)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate(conn)
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if not self._is_busy(exc) or time.monotonic() + pause > deadline:
                    raise
            except BaseException:
                conn.close()
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = _migrations()
        latest = migrations[-1][0]
        if conn.execute("PRAGMA user_version").fetchone()[0] == latest:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > latest:
                raise ConfigurationError(
                    f"{self.path} has schema version {version}, newer than this Conveyor knows ({latest}): "
                    "upgrade Conveyor")
            for number, statements in migrations[version:]:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _is_busy(exc: sqlite3.Error) -> bool:
        return ((getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

    def _unavailable(self, exc: sqlite3.Error) -> BackendUnavailable:
        if self._is_busy(exc):
            return BackendUnavailable(f"the SQLite database {self.path} is locked by another process "
                                      f"(still busy after {BUSY_TIMEOUT:g} s): {exc}")
        return BackendUnavailable(f"cannot use the SQLite database {os.path.abspath(self.path)}: {exc}")

    def _is_unavailable(self, exc: sqlite3.Error) -> bool:
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        return code in _UNAVAILABLE_CODES or (isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "unable to open" in str(exc)))

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Autocommit reads, with engine outages mapped to ``BackendUnavailable``."""
        try:
            yield self._connection()
        except sqlite3.Error as exc:
            if self._is_unavailable(exc):
                raise self._unavailable(exc) from exc
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
            plan = _EnqueuePlan(c, jobs, now)
            c.executemany(_INSERT, plan.rows)
            if plan.deps:
                c.executemany(_INSERT_DEP, plan.deps)
        return plan.results

    # -- leasing --------------------------------------------------------------------------
    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: float) -> list[Lease]:
        """Lease up to ``limit`` ready jobs from ``queues`` in one statement."""
        names = list(dict.fromkeys(queues))
        if not names or limit <= 0:
            return []
        with self._write() as c:
            if c.execute(_LIMITED_READY, (_dumps(names),)).fetchone() is None:
                self._retry_at = None  # no rate window to wait for (a past one would end every wait at once)
                rows = c.execute(_claim_sql(len(names)), (now, worker_id, limit, *names)).fetchall()
            else:
                rows = self._claim_limited(c, names, limit, worker_id, now)
        rows.sort(key=lambda r: (-r[6], r[_NCOLS], r[0]))  # line order: the claimed_ready_at RETURNING gave
        return [Lease(job, job.lease_token or "") for job in map(_job, rows)]

    def _claim_limited(self, c: sqlite3.Connection, names: Sequence[str], limit: int, worker_id: str,
                       now: float) -> list[Any]:
        """Claim past the jobs whose key is at its limit (they stay queued); in the caller's transaction."""
        gate = _Gate(c, now)
        picked: list[str] = []
        fetch = limit * 4 + 16
        for _ in range(_LIMIT_ROUNDS):
            fetch = min(max(fetch, (limit - len(picked)) * 4 + 16), _MAX_FETCH)
            rows = c.execute(_candidates_sql(len(names)),
                             (now, fetch, _dumps(sorted(gate.full)), _dumps(picked), *names)).fetchall()
            for job_id, key, concurrency, rate_count, rate_per in rows:
                if gate.admit(key, concurrency, (rate_count, rate_per) if rate_count is not None else None):
                    picked.append(job_id)
                    if len(picked) >= limit:
                        break
            if len(picked) >= limit or len(rows) < fetch:
                break
            fetch *= 4  # many keys at their limit ahead: look further in fewer rounds
        self._retry_at = gate.retry_at
        if not picked:
            return []
        if gate.starts:
            c.executemany("INSERT INTO limit_starts (key, at, until) VALUES (?, ?, ?)", gate.starts)
        return c.execute(_CLAIM_IDS, (now, worker_id, _dumps(picked))).fetchall()

    async def heartbeat(self, worker: WorkerInfo, leases: Mapping[str, str], now: float) -> HeartbeatReply:
        """Record ``worker`` as alive and extend the leases it still holds."""
        worker_row = (worker.id, worker.host, worker.pid, _dumps(list(worker.queues)), worker.concurrency,
                      _dumps(list(worker.running)), worker.started_at or now, now)
        lost: set[str] = set(leases)
        cancel: set[str] = set()
        with self._write(wakes=False) as c:
            c.execute(_HEARTBEAT_WORKER, worker_row)
            if leases:
                rows = c.execute(f"SELECT id, lease_token, cancel_requested FROM jobs WHERE status = 'running' "
                                 f"AND id IN {_IDS.format(n=1)}", (_dumps(list(leases)),))
                for job_id, token, cancel_requested in rows:
                    if token == leases[job_id]:
                        lost.discard(job_id)
                        if cancel_requested:
                            cancel.add(job_id)
                held = [job_id for job_id in leases if job_id not in lost]
                if held:
                    c.execute(_EXTEND, (now, _dumps(held)))
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
                             f"AND id IN {_IDS.format(n=1)}", (_dumps([o.job_id for o in outcomes]),)).fetchall()
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
            error = _dumps(o.error) if o.error is not None else None
            label = attempt_status(o.status, o.error)
            brief = _dumps(brief_error(o.error)) if o.error is not None else None
            if o.status in TERMINAL:
                result = _dumps(o.result) if o.status is Status.SUCCEEDED else None
                terminal.append((o.status.value, result, error, o.attempt, None, 0, now, o.job_id, label, brief))
            else:
                retry_at = (o.scheduled_at if o.scheduled_at is not None else now)
                other.append((o.status.value, None, error, o.attempt, retry_at, int(o.uncount_delivery),
                              now, o.job_id, label, brief))
        if terminal:
            c.executemany(_FINISH_TERMINAL, terminal)
        if other:
            c.executemany(_FINISH, other)
        succeeded = [o.job_id for o in done if o.status is Status.SUCCEEDED]
        if succeeded:
            c.execute(_RELEASE, (now, _dumps(succeeded)))
        ended = [o.job_id for o in done if o.status in _ENDED_BADLY]
        if ended:
            _cascade(c, ended, now)

    async def set_progress(self, job_id: str, token: str, progress: Mapping[str, Any], now: float) -> bool:
        """Record progress while ``token`` holds the lease."""
        with self._write(wakes=False) as c:
            cur = c.execute("UPDATE jobs SET progress = ?1, updated_at = ?2, revision = revision + 1 "
                            "WHERE id = ?3 AND lease_token = ?4 AND status = 'running'",
                            (_dumps(dict(progress)), now, job_id, token))
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
            await asyncio.sleep(min(POLL_INTERVAL, left))
            if self._commits != commits:
                return
            with self._read() as c:
                if c.execute("PRAGMA data_version").fetchone()[0] != version:
                    return

    @staticmethod
    def _next_due(c: sqlite3.Connection, queues: Sequence[str], now: float) -> float | None:
        """When the next delayed or retrying job of ``queues`` becomes claimable, if any."""
        times = [c.execute(_NEXT_DUE, (name, now, 1)).fetchone()[0] for name in dict.fromkeys(queues)]
        return min((t for t in times if t is not None), default=None)

    # -- reads ----------------------------------------------------------------------------
    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        """The stored jobs among ``ids``, in the order asked."""
        if not ids:
            return []
        with self._read() as c:
            rows = c.execute(f"SELECT {_COLS} FROM jobs WHERE id IN {_IDS.format(n=1)}",
                             (_dumps(list(ids)),)).fetchall()
        found = {r[0]: r for r in rows}
        return [_job(found[i]) for i in dict.fromkeys(ids) if i in found]

    async def list_jobs(self, query: JobQuery) -> Page:
        """Newest first; the cursor is the last id of the previous page."""
        limit = max(1, query.limit)
        after = _decode_cursor(query.cursor) if query.cursor else None
        with self._read() as c:
            sql, params = _list_sql(c, query, after, limit + 1)
            rows = c.execute(sql, params).fetchall()
        items = [_job(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items=items, next_cursor=_encode_cursor(items[-1].id) if more and items else None)

    async def revisions(self, ids: Sequence[str]) -> dict[str, int]:
        """``{id: revision}`` of the known jobs among ``ids``."""
        if not ids:
            return {}
        with self._read() as c:
            return dict(c.execute(f"SELECT id, revision FROM jobs WHERE id IN {_IDS.format(n=1)}",
                                  (_dumps(list(ids)),)).fetchall())

    # -- admin ----------------------------------------------------------------------------
    async def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancel a pending job (and its dependents) at once; flag a running one."""
        with self._write() as c:
            row = c.execute("SELECT status, cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            status = _STATUS[row[0]]
            if status in PENDING:
                c.execute(f"UPDATE jobs SET status = 'cancelled', {_TERMINAL_SET.format(now=1)} WHERE id = ?2",
                          (now, job_id))
                _cascade(c, [job_id], now)
            elif status is Status.RUNNING and not row[1]:
                c.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ?1, revision = revision + 1 "
                          "WHERE id = ?2", (now, job_id))
            job = c.execute(f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(job)

    async def requeue(self, queue: str | None, ids: Sequence[str] | None, statuses: Sequence[Status],
                      now: float) -> list[Job]:
        """Put jobs in ``statuses`` (of ``queue`` and/or among ``ids``) back: ``queued``, or
        ``waiting`` while a parent is pending. A job of ``ids`` whose parent ended badly refuses
        the call (``InvalidTransition``); a whole queue's redrive leaves such jobs failed."""
        allowed = [str(s) for s in dict.fromkeys(statuses) if can_transition(Status(s), Status.QUEUED)]
        if not allowed or (ids is not None and not ids):
            return []
        where, params = [f"status IN {_IDS.format(n=2)}"], [now, _dumps(allowed)]
        if queue is not None:
            params.append(queue)
            where.append(f"queue = ?{len(params)}")
        if ids is not None:
            params.append(_dumps(list(ids)))
            where.append(f"id IN {_IDS.format(n=len(params))}")
        with self._write() as c:  # (the parents are read and the jobs moved under one write lock)
            found = c.execute(f"SELECT id, depends_on FROM jobs WHERE {' AND '.join(where)}", params).fetchall()
            ready, waiting = _by_parents(c, found, refuse=ids is not None)
            rows = []
            for status, ready_at, chosen in (("'queued'", "?1", ready), ("'waiting'", "NULL", waiting)):
                if chosen:
                    rows += c.execute(f"UPDATE jobs SET {_REQUEUE_SET.format(status=status, ready_at=ready_at)} "
                                      f"WHERE id IN {_IDS.format(n=2)} RETURNING {_COLS}",
                                      (now, _dumps(chosen))).fetchall()
        return sorted(map(_job, rows), key=lambda j: j.id)

    async def purge(self, queue: str, now: float) -> int:
        """Cancel every ready job of ``queue`` (and their dependents)."""
        with self._write() as c:
            rows = c.execute(f"UPDATE jobs SET status = 'cancelled', {_TERMINAL_SET.format(now=1)} "
                             "WHERE queue = ?2 AND ready_at IS NOT NULL RETURNING id", (now, queue)).fetchall()
            purged = [r[0] for r in rows]
            if purged:
                _cascade(c, purged, now)
        return len(purged)

    async def queue_settings(self, name: str) -> QueueSettings:
        """Stored settings of ``name``, or the defaults."""
        with self._read() as c:
            row = c.execute(f"SELECT {_SETTINGS_COLS} FROM queues WHERE name = ?", (name,)).fetchone()
        return _settings(row) if row is not None else _DEFAULTS

    async def save_queue_settings(self, name: str, settings: QueueSettings,
                                  fields: Collection[str] | None = None) -> None:
        """Store the settings of ``name`` (with ``fields``, only those: a new queue's row gets
        ``settings`` whole, an existing one just the named columns)."""
        row = (name, settings.retention, settings.visibility_timeout, settings.max_deliveries,
               settings.result_ttl, int(settings.paused))
        with self._write() as c:
            if fields is None:
                c.execute(f"INSERT OR REPLACE INTO queues ({_SETTINGS_COLS}) VALUES (?, ?, ?, ?, ?, ?)", row)
                return
            c.execute(f"INSERT OR IGNORE INTO queues ({_SETTINGS_COLS}) VALUES (?, ?, ?, ?, ?, ?)", row)
            named = [f for f in _SETTINGS_COLS.split(", ")[1:] if f in fields]
            if named:
                c.execute(f"UPDATE queues SET {', '.join(f'{f} = ?' for f in named)} WHERE name = ?",
                          (*(getattr(settings, f) for f in named), name))

    async def queues(self, names: Sequence[str] | None = None) -> list[QueueInfo]:
        """Queues with stored settings or jobs (or ``names``), with counts per status."""
        with self._read() as c:
            settings = {r[0]: _settings(r) for r in c.execute(f"SELECT {_SETTINGS_COLS} FROM queues")}
            counts: dict[str, dict[str, int]] = {}
            for queue, status, n in c.execute(_COUNTS):
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
                f"RETURNING {_COLS}, webhook_attempts", (now, lease, limit)).fetchall()
        rows.sort(key=lambda r: r[0])
        return [(_job(r), r[_NCOLS]) for r in rows]

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
            settings = {r[0]: _settings(r) for r in c.execute(f"SELECT {_SETTINGS_COLS} FROM queues")}
            ready_queues = [r[0] for r in c.execute(_READY_QUEUES)]
            finished_queues = [r[0] for r in c.execute(_FINISHED_QUEUES)]
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
            dead = [(_dumps({"type": "DeliveryLimitExceeded",
                            "message": f"delivered {r[1]} times without finishing "
                                       f"(lease expired; max_deliveries {r[2]})"}),
                     now, r[0]) for r in rows if r[1] >= r[2] and not r[3]]
            if cancelled:
                c.execute(f"UPDATE jobs SET status = 'cancelled', error = ?3, {_TERMINAL_SET.format(now=1)}, "
                          f"{_END_ATTEMPT.format(now=1, st=4, err=5)} WHERE id IN {_IDS.format(n=2)}",
                          (now, _dumps(cancelled), _dumps(CANCELLED_LOST), "cancelled",
                           _dumps(brief_error(CANCELLED_LOST))))
            lost = _dumps(LEASE_LOST)
            if back:
                c.execute("UPDATE jobs SET status = 'queued', ready_at = coalesce(claimed_ready_at, ?1), "
                          "put_back_at = ?1, updated_at = ?1, revision = revision + 1, "
                          "worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, "
                          f"{_END_ATTEMPT.format(now=1, st=3, err=4)} "
                          f"WHERE id IN {_IDS.format(n=2)}", (now, _dumps(back), "lost", lost))
            if dead:
                c.executemany(f"UPDATE jobs SET status = 'failed', error = ?1, {_TERMINAL_SET.format(now=2)}, "
                              f"{_END_ATTEMPT.format(now=2, st=4, err=5)} WHERE id = ?3",
                              [(*d, "lost", lost) for d in dead])
            if dead or cancelled:
                _cascade(c, [d[2] for d in dead] + cancelled, now)
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
                    f"UPDATE jobs SET status = 'expired', {_TERMINAL_SET.format(now=1)} "
                    f"WHERE id IN ({_PAST_RETENTION}) RETURNING id",
                    (now, name, now - retention, limit - total)).fetchall()
                if rows:
                    _cascade(c, [r[0] for r in rows], now)
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
                    gone = _dumps([r[0] for r in rows])
                    c.execute(f"DELETE FROM job_deps WHERE child IN {_IDS.format(n=1)}", (gone,))
                    c.execute(f"DELETE FROM job_deps WHERE parent IN {_IDS.format(n=1)}", (gone,))
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
            return [WorkerInfo(id=r[0], host=r[1], pid=r[2], queues=tuple(_loads(r[3])), concurrency=r[4],
                               running=tuple(_loads(r[5])), started_at=r[6], last_heartbeat=r[7]) for r in rows]


def _list_sql(c: sqlite3.Connection, query: JobQuery, after: str | None, limit: int) -> tuple[str, list[Any]]:
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
    return f"SELECT {_COLS} FROM {source} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?1", params


def _list_cold_sql(c: sqlite3.Connection, query: JobQuery, status: Status, where: list[str],
                   params: list[Any]) -> tuple[str, list[Any]]:
    queues = [query.queue] if query.queue is not None else [r[0] for r in c.execute(_COLD_QUEUES)]
    if not queues or len(queues) > _MAX_RANGES:  # none, or too many to merge: walk the primary key
        return (f"SELECT {_COLS} FROM jobs WHERE {' AND '.join(where)} AND status = '{status.value}' "
                "ORDER BY id DESC LIMIT ?1", params)
    where = [w for w in where if not w.startswith("queue =")]
    params = params[:2] + ([query.task] if query.task is not None else [])
    ranges = []
    for queue in queues:
        params.append(queue)
        ranges.append(f"SELECT * FROM (SELECT id FROM jobs WHERE queue = ?{len(params)} AND status = '{status.value}' "
                      f"AND {_COLD} AND {' AND '.join(where)} ORDER BY id DESC LIMIT ?1)")
    return (f"SELECT {_COLS} FROM jobs WHERE id IN (SELECT id FROM ({' UNION ALL '.join(ranges)}) "
            "ORDER BY id DESC LIMIT ?1) ORDER BY id DESC", params)


def _cascade(c: sqlite3.Connection, ended: Sequence[str], now: float) -> int:
    """Cancel the pending dependents of ``ended`` jobs, level by level; how many."""
    total, frontier = 0, list(ended)
    while frontier:
        frontier = [r[0] for r in c.execute(_CASCADE, (now, _dumps(frontier))).fetchall()]
        total += len(frontier)
    return total


def _by_parents(c: sqlite3.Connection, found: Sequence[Any], refuse: bool) -> tuple[list[str], list[str]]:
    """The ids of ``found`` (``(id, depends_on)`` rows) to requeue: ``(ready, waiting)``, by
    ``rules.retry_by_parents``."""
    deps = {job_id: _loads(raw) or [] for job_id, raw in found}
    parents = sorted({p for ps in deps.values() for p in ps})
    status = dict(c.execute(f"SELECT id, status FROM jobs WHERE id IN {_IDS.format(n=1)}",
                            (_dumps(parents),)).fetchall()) if parents else {}
    return rules.retry_by_parents(deps, status, refuse)


def _encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        last_id = job_id_of(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        last_id = None
    if last_id is None:
        raise invalid_cursor()
    return last_id


class _EnqueuePlan:
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
        rows = c.execute(f"SELECT {_COLS} FROM jobs WHERE idempotency_key IN {_IDS.format(n=1)}", (_dumps(keys),))
        return {r[14]: _job(r) for r in rows}

    def _load_parent_status(self, c: sqlite3.Connection, jobs: Sequence[Job]) -> None:
        for job in self.stored.values():
            self.status[job.id] = job.status
        outside = {p for j in jobs for p in j.depends_on if p not in self.batch_ids}
        if outside:
            rows = c.execute(f"SELECT id, status FROM jobs WHERE id IN {_IDS.format(n=1)}", (_dumps(list(outside)),))
            self.status.update((i, _STATUS[s]) for i, s in rows)

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
            new.id, new.task, new.queue, status.value, _dumps(list(new.args)), _json_or_empty(new.kwargs, "{}"),
            new.priority, _dumps(new.progress) if new.progress is not None else None, None,
            _dumps(error) if error is not None else None, new.attempt, new.max_retries, new.timeout,
            _json_or_empty(parents, "[]"), key, _json_or_empty(new.metadata, "{}"), new.webhook, created_at,
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
            if ended in _ENDED_BADLY:
                return Status.CANCELLED, {"type": "DependencyFailed", "message": f"parent {parent} ended {ended}"}
        if any(self.status.get(p) is not Status.SUCCEEDED for p in parents):
            return Status.WAITING, None
        if job.scheduled_at is not None and job.scheduled_at > self.now:
            return Status.SCHEDULED, None
        return Status.QUEUED, None


__all__ = ["SQLiteBackend", "path_from_url"]
