"""The PostgreSQL engine: psycopg 3 (async) with a connection pool, LISTEN/NOTIFY for wake-ups.

One URL: ``postgresql://user@host:5432/db?schema=conveyor``. The ``schema`` parameter (default
``conveyor``) names the PostgreSQL schema that holds Conveyor's tables; ``pool_min``/``pool_max``
size the pool and ``pool_timeout`` bounds the wait for a connection (seconds). All other
parameters go to libpq unchanged.

Every query is schema-qualified, so :meth:`PostgresBackend.enqueue_in` works on any connection of
the caller's, whatever its ``search_path``. Times are stored as epoch seconds (``double precision``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import importlib.resources
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.adapt
import psycopg.errors
import psycopg.types.json
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from conveyor import serialization
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
from conveyor.core.job import CANCELLED_HANDED_BACK, CANCELLED_LOST, Job, Status
from conveyor.core.queues import QueueSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
AConn = psycopg.AsyncConnection[Any]

#: The Job fields, in dataclass order: rows are built positionally (``Job(*row)``).
JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))
_STATUS_INDEX = JOB_FIELDS.index("status")
_RATE_INDEX = JOB_FIELDS.index("rate_limit")
#: Rounds of candidates one limited claim looks at (each skips the keys found full), and the most
#: rows one round reads: rounds read 4x more each, so thousands of keys at their limit ahead of a
#: job do not keep it waiting (about 18,000 looked past in all).
_LIMIT_ROUNDS = 8
_MAX_FETCH = 4096
#: Failed claims of a worker remembered for ``_hand_back_lost`` (one per retry of an outage: its
#: backoff is capped at a few seconds); the oldest leases have expired by then anyway.
_LOST_CLAIMS_KEPT = 256
_DEFAULTS = QueueSettings()
_TERMINAL_FAIL = ("failed", "cancelled", "expired")
_QUEUE_SETTINGS = ("retention", "visibility_timeout", "max_deliveries", "result_ttl", "paused")
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
_OWN_PARAMS = ("schema", "pool_min", "pool_max", "pool_timeout")
_RETRYABLE = (psycopg.errors.TransactionRollback,)
#: libpq options every connection gets unless the URL sets them: a dead peer (a silent partition,
#: a frozen host: no reset) is noticed in about 11 s, as by the Redis engine, instead of a request
#: in flight waiting out TCP's retransmission backoff (libpq's defaults: keepalive after 2 h, no
#: user timeout) until the worker's stall watchdog exits it.
_KEEPALIVE = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "3",
              **({"tcp_user_timeout": "11000"} if psycopg.pq.version() >= 120000 else {})}
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)


#: Sent ahead of a statement of the job path, in the same pipeline (see ``_fetch_hot``).
_GENERIC = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"
_DURABLE = ("SELECT set_config('plan_cache_mode', 'force_generic_plan', true), "
            "set_config('synchronous_commit', 'on', true)")

_TRIVIAL_JSON: dict[bytes, Any] = {b"[]": [], b"{}": {}, b"null": None}


def _json_loads(data: bytes | bytearray | memoryview | str) -> Any:
    """``json.loads``, short-cutting the empty values most job columns hold."""
    raw = bytes(data) if not isinstance(data, str) else data.encode()
    if len(raw) <= 4 and raw in _TRIVIAL_JSON:
        value = _TRIVIAL_JSON[raw]
        return [] if value == [] else {} if value == {} else value
    return serialization.loads(raw)


_ADAPTERS = psycopg.adapt.AdaptersMap(psycopg.adapters)
psycopg.types.json.set_json_loads(_json_loads, _ADAPTERS)


def _load_text(name: str) -> str:
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def load_queries(schema_ident: str) -> dict[str, str]:
    """The named queries of ``queries.sql`` with the schema and the Job columns filled in."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    job_cols = ", ".join(f"j.{c}" for c in JOB_FIELDS)
    for line in _load_text("queries.sql").splitlines():
        if line.startswith("-- name:"):
            if name:
                queries[name] = "\n".join(lines).strip().rstrip(";")
            name, lines = line.split(":", 1)[1].strip(), []
        elif name is not None and not line.startswith("--"):
            lines.append(line)
    if name:
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return {k: v.replace("__schema__", schema_ident).replace("__JOB__", job_cols) for k, v in queries.items()}


def migrations() -> list[tuple[int, str, str]]:
    """The ordered migrations: (version, file name, SQL with ``__schema__`` placeholders)."""
    found = []
    for entry in importlib.resources.files(__package__).joinpath("migrations").iterdir():
        match = re.match(r"^(\d+)_.*\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _row_to_job(row: Sequence[Any]) -> Job:
    values = list(row[: len(JOB_FIELDS)])
    values[_STATUS_INDEX] = Status(values[_STATUS_INDEX])
    rate = values[_RATE_INDEX]
    if rate is not None:  # stored as [count, per_seconds]
        values[_RATE_INDEX] = (int(rate[0]), float(rate[1]))
    return Job(*values)


def _ready_status(job: Job, now: float) -> Status:
    """The status of a new job whose parents (if any) all succeeded."""
    return Status.SCHEDULED if job.scheduled_at is not None and job.scheduled_at > now else Status.QUEUED


def _announcements(due: Iterable[tuple[str, float]]) -> list[str]:
    """Payloads for the due channel: ``<queue> <due>``, the earliest per queue."""
    first: dict[str, float] = {}
    for queue, at in due:
        first[queue] = min(at, first.get(queue, at))
    return [f"{queue} {at!r}" for queue, at in sorted(first.items())]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _encode_cursor(created_at: float, job_id: str) -> str:
    raw = serialization.dumps([created_at, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = serialization.loads(raw)
        last = float(created_at), job_id_of(job_id)
    except (ValueError, TypeError):
        last = math.nan, None
    if last[1] is None or not math.isfinite(last[0]):
        raise invalid_cursor()
    return last[0], last[1]


class _Waiter:
    """One ``wait_for_work`` in progress: its queues, and the earliest due time it knows of."""

    __slots__ = ("_fut", "due", "queues")

    def __init__(self, queues: frozenset[str]) -> None:
        self.queues = queues
        self.due = math.inf  #: epoch seconds; lowered by the due channel's announcements
        self._fut: asyncio.Future[None] | None = None

    def ring(self) -> None:
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    async def sleep(self, timeout: float) -> None:
        """Sleep until rung or for ``timeout`` seconds."""
        self._fut = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._fut
        except TimeoutError:
            pass
        finally:
            self._fut = None


class _Listener:
    """One dedicated LISTEN connection; wakes the waiters of the queues named in notifications.

    Two channels: ``channel`` carries a queue name when it may have work now; ``due_channel``
    carries ``<queue> <due>`` when a delayed or retrying job of that queue becomes claimable at
    ``due`` (epoch seconds), so that waiters end their wait then instead of at their timeout.
    """

    def __init__(self, conninfo: str, channel: str, due_channel: str, app: str) -> None:
        self._conninfo = conninfo
        self._app = app
        self._channel = channel
        self._due_channel = due_channel
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[_Waiter] = []
        self.counter = 0  #: bumped on every notification and (re)connect
        self.last: dict[str, int] = {}  #: queue -> counter value of its last notification
        self.announced: dict[str, int] = {}  #: queue -> counter value of its last due announcement
        self.reconnected_at = 0  #: counter value at the last (re)connect: anything may have been missed
        self.ready = asyncio.Event()
        self.connects = 0

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="conveyor-pg-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._wake(None)  # the waits in progress end

    def changed_since(self, mark: int, queues: frozenset[str]) -> bool:
        return self.reconnected_at > mark or any(self.last.get(q, -1) > mark for q in queues)

    def announced_since(self, mark: int, queues: frozenset[str]) -> bool:
        """Whether a due time of ``queues`` may have been announced (or missed) since ``mark``."""
        return self.reconnected_at > mark or any(self.announced.get(q, -1) > mark for q in queues)

    @contextlib.contextmanager
    def waiter(self, queues: frozenset[str]) -> Iterator[_Waiter]:
        """A waiter on ``queues``, rung by their notifications and earlier due times until exit."""
        waiter = _Waiter(queues)
        self._waiters.append(waiter)
        try:
            yield waiter
        finally:
            self._waiters.remove(waiter)

    def _wake(self, queue: str | None) -> None:
        self.counter += 1
        if queue is None:
            self.reconnected_at = self.counter
        else:
            self.last[queue] = self.counter
        for waiter in self._waiters:
            if queue is None or queue in waiter.queues:
                waiter.ring()

    def _announce(self, payload: str) -> None:
        queue, _, at = payload.rpartition(" ")
        try:
            due = float(at)
        except ValueError:
            return
        self.counter += 1
        self.announced[queue] = self.counter
        for waiter in self._waiters:
            if queue in waiter.queues and due < waiter.due:
                waiter.due = due
                waiter.ring()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True,
                                                             application_name=self._app)
            except _UNAVAILABLE:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                for channel in (self._channel, self._due_channel):
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                delay = 0.05
                self.ready.set()
                if self.connects:
                    self._wake(None)  # notifications may have been missed while not listening
                self.connects += 1
                async for note in conn.notifies():
                    if note.channel == self._due_channel:
                        self._announce(note.payload)
                    else:
                        self._wake(note.payload or None)
            except _UNAVAILABLE:
                pass
            finally:
                self.ready.clear()
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class _Gate:
    """Admits limited jobs while their key has a free slot and room in its rate window.

    Each key is decided under a transaction-level advisory lock (``limit_lock``), so that two
    claimers never both take its last slot; a key locked by another claimer is skipped.
    """

    def __init__(self, backend: PostgresBackend, conn: AConn, now: float) -> None:
        # a start counts from when it happened: a claim that waited for a connection runs after its ``now``
        self.backend, self.conn, self.now = backend, conn, max(now, time.time())
        self.full: set[str] = set()
        self.running: dict[str, int] = {}
        self.window: dict[tuple[str, float], list[float]] = {}  #: (key, per) -> [starts, oldest]
        self.starts: list[tuple[str, float, float]] = []  #: rows for limit_starts
        self.retry_at: float | None = None

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
                        and (r[1], float(r[3][1])) not in self.window})
        if pairs:
            windows = await self.backend._fetch("limit_windows", {
                "keys": [k for k, _ in pairs], "pers": [p for _, p in pairs], "now": self.now}, self.conn)
            for key, per, n, oldest in windows:
                self.window[(key, float(per))] = [int(n), oldest if oldest is not None else self.now]

    @property
    def _lock_prefix(self) -> str:
        return f"conveyor:{self.backend.schema}:"

    async def admit(self, key: str | None, concurrency: int | None, rate: Sequence[Any] | None) -> bool:
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
        w = self.window.get((key, per))
        if w is None:
            n, oldest = await self._one("limit_starts", {"key": key, "since": self.now - per})
            w = self.window[(key, per)] = [int(n), oldest if oldest is not None else self.now]
        if w[0] >= count:
            self.full.add(key)
            at = w[1] + per
            self.retry_at = at if self.retry_at is None else min(self.retry_at, at)
            return False
        w[0] += 1
        self.starts.append((key, self.now, self.now + per))
        return True


class PostgresBackend(Backend):
    """Conveyor's jobs, leases and queues in PostgreSQL (one schema per installation)."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        own = {k: params.pop(k) for k in _OWN_PARAMS if k in params}
        self.schema = own.get("schema") or "conveyor"
        if not _SCHEMA_RE.match(self.schema):
            raise ConfigurationError(f"invalid PostgreSQL schema name {self.schema!r} in the URL: "
                                     "use letters, digits and underscores")
        try:
            self._min_size = int(own.get("pool_min", min_size))
            self._max_size = max(self._min_size, int(own.get("pool_max", max_size)))
            self._timeout = float(own.get("pool_timeout", timeout))
        except ValueError as exc:
            raise ConfigurationError(f"invalid pool setting in the PostgreSQL URL: {exc}") from exc
        params.update({k: v for k, v in _KEEPALIVE.items() if k not in params})
        scheme = "postgresql"
        self.url = url
        self.conninfo = urlunsplit((scheme, parts.netloc, parts.path, urlencode(params), parts.fragment))
        try:  # libpq's own check of its options: a typo is a configuration error, not a failed connection
            psycopg.conninfo.conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"the PostgreSQL URL: {exc} (options: schema, pool_min, pool_max, "
                                     "pool_timeout, and libpq's)") from None
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
        self.channel = f"conveyor_{self.schema}"
        #: Due times of delayed and retrying jobs (``<queue> <due>``); ':' cannot be in a schema name.
        #: (The statements that notify it name it ``%(channel)s || ':due'``.)
        self.due_channel = f"{self.channel}:due"
        self.application_name = f"conveyor:{self.schema}"
        self._schema_ident = '"' + self.schema + '"'
        self.q = load_queries(self._schema_ident)
        self._pool: AsyncConnectionPool[AConn] | None = None
        self._listener: _Listener | None = None
        self._marks: dict[frozenset[str], int] = {}
        #: queues -> (listener counter, first due time): what the last wait knew (see ``_next_due``)
        self._due: dict[frozenset[str], tuple[int, float]] = {}
        #: When a rate-limited job that the last claim left queued may start (wakes ``wait_for_work``).
        self._retry_at: float | None = None
        #: Set when a call found the server unreachable: the next calls probe it with one direct
        #: connect (failing at once while it is down) instead of waiting ``pool_timeout`` for a
        #: pool that cannot connect; a successful probe purges the pool's dead connections.
        self._down = False
        self._probing: asyncio.Future[None] | None = None
        self._probe_timeout = max(2, int(float(params.get("connect_timeout") or 2)))
        #: worker id -> the ``now`` of its claims that failed without a reply: the engine may have
        #: committed them (the connection dropped after the commit). See ``_hand_back_lost``.
        self._lost_claims: dict[str, list[float]] = {}

    # -- plumbing -----------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"PostgreSQL at {self._where} is unavailable: {_first_line(exc)}")

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (BackendUnavailable, psycopg.errors.TransactionRollback):
            raise
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def _run(self, fn: Callable[[AConn], Awaitable[T]], *, transaction: bool = False) -> T:
        """Run ``fn`` on a pooled connection (in a transaction if asked); retry deadlocks."""
        if self._pool is None:
            raise BackendUnavailable("the PostgreSQL backend is not open")
        if self._down:
            await self._probe()
        try:
            return await self._attempts(fn, transaction)
        except BackendUnavailable:
            self._down = True
            raise

    async def _probe(self) -> None:
        """One direct connection attempt shared by concurrent callers (see ``_down``)."""
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._probe_once())
            self._probing.add_done_callback(lambda f: f.cancelled() or f.exception())  # always retrieved
        await asyncio.shield(self._probing)

    async def _probe_once(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True,
                                                         connect_timeout=self._probe_timeout,
                                                         application_name=self.application_name)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        with contextlib.suppress(Exception):
            await conn.close()
        pool = self._pool
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.check()  # drop the connections that died with the outage
        self._down = False

    async def _attempts(self, fn: Callable[[AConn], Awaitable[T]], transaction: bool) -> T:
        assert self._pool is not None
        for attempt in range(5):
            try:
                async with self._errors(), self._pool.connection() as conn:
                    if not transaction:
                        return await fn(conn)
                    # Pool sessions commit asynchronously (claims, acks, heartbeats: a crash of the
                    # server can only cause a redelivery); transactions (enqueue, admin, DAG moves)
                    # are durable. The pipeline sends BEGIN and SET with the first query.
                    async with conn.pipeline(), conn.transaction():
                        await conn.execute("SET LOCAL synchronous_commit TO on")
                        return await fn(conn)
            except _RETRYABLE:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _fetch(self, name: str, params: Mapping[str, Any], conn: AConn | None = None) -> list[Any]:
        async def go(c: AConn) -> list[Any]:
            cur = await c.execute(self.q[name], params)
            try:  # (in pipeline mode the description is only known after fetching)
                return await cur.fetchall()
            except psycopg.ProgrammingError:
                return []  # a statement without rows

        if conn is not None:
            return await go(conn)
        return await self._run(go)

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[AConn] = AsyncConnectionPool(
            self.conninfo, min_size=self._min_size, max_size=self._max_size, timeout=self._timeout,
            kwargs={"autocommit": True, "context": _ADAPTERS, "application_name": self.application_name,
                    "options": f"-c search_path={self.schema},public -c synchronous_commit=off"},
            open=False, name=f"conveyor-{self.schema}", reconnect_timeout=0)
        try:
            await self._probe_once()  # fails at once, with libpq's reason, when the server is down
            await pool.open(wait=True, timeout=self._timeout)
        except _UNAVAILABLE as exc:
            await pool.close()
            raise self._unavailable(exc) from exc
        self._pool = pool
        try:
            await self._run(self._migrate)
        except BaseException:
            self._pool = None
            await pool.close()
            raise
        # The listener starts with the backend, so that no notification sent after open() is
        # missed by a later wait_for_work().
        self._listener = _Listener(self.conninfo, self.channel, self.due_channel, self.application_name)
        self._listener.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listener.ready.wait(), self._timeout)

    async def _migrate(self, conn: AConn) -> None:
        schema = self._schema_ident
        async with conn.transaction():
            # One migrator at a time, per schema, across processes.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"conveyor:{self.schema}",))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.schema_version "
                               "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL "
                               "DEFAULT now())")
            cur = await conn.execute(f"SELECT version FROM {schema}.schema_version")
            applied = {row[0] for row in await cur.fetchall()}
            for version, name, text in migrations():
                if version in applied:
                    continue
                await conn.execute(text.replace("__schema__", schema))
                await conn.execute(f"INSERT INTO {schema}.schema_version (version, name) VALUES (%s, %s)",
                                   (version, name))

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        self._due.clear()  # counters of a listener that is gone
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def drop(self) -> None:
        """Drop this installation's schema and everything in it (tests, uninstall)."""
        if self.schema == "public":
            raise ConfigurationError("refusing to drop the public schema")

        async def go(conn: AConn) -> None:
            await conn.execute(f"DROP SCHEMA IF EXISTS {self._schema_ident} CASCADE")

        await self._run(go)

    async def ping(self) -> None:
        async def go(conn: AConn) -> None:
            await conn.execute("SELECT 1")

        await self._run(go)

    # -- submit -------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        if not jobs:
            return []
        if any(j.depends_on for j in jobs):
            return await self._run(lambda conn: self._enqueue(conn, jobs), transaction=True)
        # No dependencies: one statement, committed durably, in one round trip. A stored job found
        # by id or idempotency key is read by a later statement (as READ COMMITTED would in the
        # same transaction).
        _, params = self._insert_params(jobs, {}, {}, time.time())
        rows = await self._fetch_hot("insert_jobs", params, durable=True)
        inserted = {row[0]: _row_to_job(row) for row in rows}
        missing = [j for j in jobs if j.id not in inserted]
        existing = await self._run(lambda conn: self._lookup_existing(conn, missing)) if missing else {}
        return self._enqueued(jobs, inserted, existing)

    async def _fetch_hot(self, name: str, params: Mapping[str, Any], *, durable: bool = False) -> list[Any]:
        """One statement of the job path (claim, finish, heartbeat, insert) in one round trip.

        The pipeline sends a ``set_config(..., true)`` and the statement with one Sync: without a
        BEGIN both run in one implicit transaction, committed at the Sync (rolled back on an
        error), and the settings last until then. ``plan_cache_mode``: these statements are
        prepared by psycopg after a few runs, and a custom plan per run (the default while the
        generic plan's estimate is no better) costs more to plan than the statement to run
        (~0.5 ms per claim); the generic plan uses the same indexes. ``durable``: the commit waits
        for the WAL flush (pool sessions commit asynchronously otherwise).
        """
        async def go(conn: AConn) -> list[Any]:
            async with conn.pipeline():
                await conn.execute(_DURABLE if durable else _GENERIC)
                cur = await conn.execute(self.q[name], params)
            return await cur.fetchall()

        return await self._run(go)

    async def enqueue_in(self, conn: psycopg.AsyncConnection[Any], jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """Enqueue ``jobs`` on the caller's connection, inside the caller's transaction.

        The jobs exist (and workers are notified) if and only if the caller commits. Works on
        any connection to the same database, whatever its ``search_path``.
        """
        if not isinstance(conn, psycopg.AsyncConnection):
            raise ConfigurationError(
                f"enqueue_in_transaction needs a psycopg.AsyncConnection, not {type(conn).__name__}: "
                "from sync code, open one with psycopg.AsyncConnection.connect, or enqueue after your commit")
        if not jobs:
            return []
        async with self._errors(), conn.transaction():
            return await self._enqueue(conn, jobs)

    async def _enqueue(self, conn: AConn, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        now = time.time()
        existing: dict[str, Job] = {}  # batch id -> stored job with the same idempotency key
        statuses: dict[str, tuple[Status, dict[str, Any] | None]] = {}
        if any(j.depends_on for j in jobs):
            keys = [j.idempotency_key for j in jobs if j.idempotency_key is not None]
            if keys:
                stored = {s.idempotency_key: s for s in map(_row_to_job, await self._fetch(
                    "select_by_keys", {"keys": keys}, conn))}
                existing = {j.id: stored[j.idempotency_key] for j in jobs
                            if j.idempotency_key is not None and j.idempotency_key in stored}
            statuses = await self._dependency_statuses(conn, jobs, existing, now)
        records, params = self._insert_params(jobs, existing, statuses, now)
        rows = await self._fetch("insert_jobs", params, conn) if records else []
        inserted = {row[0]: _row_to_job(row) for row in rows}
        deps = [(p, r["id"]) for r in records if r["id"] in inserted for p in dict.fromkeys(r["depends_on"])]
        if deps:
            await self._fetch("insert_deps", {"parents": [p for p, _ in deps], "children": [c for _, c in deps]},
                              conn)
        missing = [j for j in jobs if j.id not in inserted and j.id not in existing]
        if missing:
            existing.update(await self._lookup_existing(conn, missing))
        return self._enqueued(jobs, inserted, existing)

    def _insert_params(self, jobs: Sequence[Job], existing: Mapping[str, Job],
                       statuses: Mapping[str, tuple[Status, dict[str, Any] | None]],
                       now: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The records of the new jobs (not in ``existing``) and the parameters of ``insert_jobs``."""
        records, notify, due = [], set(), []
        parents = {p for j in jobs for p in j.depends_on}
        remap = {k: v.id for k, v in existing.items()}
        for job in jobs:
            if job.id in existing:
                continue
            status, error = statuses.get(job.id, (_ready_status(job, now), None))
            record = self._record(job, status, error, now, remap, job.id in parents)
            if record["status"] == "queued" or (record["ready_at"] is not None and record["ready_at"] <= now):
                notify.add(job.queue)
            elif record["status"] == "scheduled":
                due.append((job.queue, record["ready_at"]))
            records.append(record)
        try:
            payload = serialization.dumps(records)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"job arguments must be JSON: {exc}") from exc
        return records, {"jobs": payload, "channel": self.channel, "notify": sorted(notify),
                         "due": _announcements(due)}

    @staticmethod
    def _enqueued(jobs: Sequence[Job], inserted: Mapping[str, Job],
                  existing: Mapping[str, Job]) -> list[tuple[Job, bool]]:
        out: list[tuple[Job, bool]] = []
        for job in jobs:
            if job.id in inserted:
                out.append((inserted[job.id], True))
            elif job.id in existing:
                out.append((existing[job.id], False))
            else:  # pragma: no cover - a conflict whose winner vanished at once
                raise BackendUnavailable("PostgreSQL: a conflicting job disappeared during enqueue; retry")
        return out

    @staticmethod
    def _record(job: Job, status: Status, error: Mapping[str, Any] | None, now: float,
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

    async def _lookup_existing(self, conn: AConn, jobs: Sequence[Job]) -> dict[str, Job]:
        keys = [j.idempotency_key for j in jobs if j.idempotency_key is not None]
        by_key = {s.idempotency_key: s for s in map(_row_to_job, await self._fetch(
            "select_by_keys", {"keys": keys}, conn))} if keys else {}
        by_id = {s.id: s for s in map(_row_to_job, await self._fetch(
            "select_jobs", {"ids": [j.id for j in jobs]}, conn))}
        found: dict[str, Job] = {}
        for job in jobs:
            stored = by_key.get(job.idempotency_key) if job.idempotency_key is not None else None
            stored = stored or by_id.get(job.id)
            if stored is not None:
                found[job.id] = stored
        return found

    async def _dependency_statuses(self, conn: AConn, jobs: Sequence[Job], existing: Mapping[str, Job],
                                   now: float) -> dict[str, tuple[Status, dict[str, Any] | None]]:
        """Per new job with parents: its status (waiting/cancelled/ready) from its parents' statuses."""
        batch = {j.id: j for j in jobs if j.id not in existing}
        remap = {k: v.id for k, v in existing.items()}
        outside = sorted({remap.get(p, p) for j in batch.values() for p in j.depends_on} - set(batch))
        parent_status: dict[str, str] = {}
        if outside:
            parent_status = {r[0]: r[1] for r in await self._fetch("mark_parents", {"ids": outside}, conn)}
        many = len(jobs) > 1
        errors = [{"pointer": f"#/jobs/{n}/depends_on/{i}" if many else f"#/depends_on/{i}",
                   "detail": f"depends_on: no job has id {p!r}"}
                  for n, j in enumerate(jobs) if j.id in batch for i, p in enumerate(j.depends_on)
                  if remap.get(p, p) not in batch and remap.get(p, p) not in parent_status]
        if errors:
            raise ValidationError("; ".join(e["detail"] for e in errors), errors)
        memo: dict[str, tuple[Status, dict[str, Any] | None]] = {}

        def resolve(job: Job) -> tuple[Status, dict[str, Any] | None]:
            if job.id in memo:
                return memo[job.id]
            memo[job.id] = (Status.WAITING, None)  # guards against cycles inside a batch
            result: tuple[Status, dict[str, Any] | None] = (_ready_status(job, now), None)
            for pid in (remap.get(p, p) for p in job.depends_on):
                pstatus = str(resolve(batch[pid])[0]) if pid in batch else parent_status[pid]
                if pstatus in _TERMINAL_FAIL:
                    result = (Status.CANCELLED, {"type": "DependencyFailed",
                                                 "message": f"parent {pid} ended {pstatus}"})
                    break
                if pstatus != Status.SUCCEEDED:
                    result = (Status.WAITING, None)
            memo[job.id] = result
            return result

        return {j.id: resolve(j) for j in batch.values() if j.depends_on}

    # -- leasing ------------------------------------------------------------------------
    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: float) -> list[Lease]:
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            return []
        params = self._claim_params(names, limit, worker_id, now)
        await self._hand_back_lost(worker_id)
        try:
            return await self._leases(params, await self._fetch_hot("claim", params))
        except BaseException:
            self._claim_lost(worker_id, now)
            raise

    def _claim_lost(self, worker_id: str, now: float) -> None:
        """A claim at ``now`` raised: whatever it leased never reached the worker."""
        lost = self._lost_claims.setdefault(worker_id, [])
        lost.append(now)
        del lost[:-_LOST_CLAIMS_KEPT]

    async def _hand_back_lost(self, worker_id: str) -> None:
        """Hand back the jobs leased by claims of ``worker_id`` whose reply was lost (see
        ``lost_claims``), before its next claim or as it stops: they run again now, not once their leases expire
        (the visibility timeout after the outage). Unsent claims found nothing; a worker never
        holds a lease from a claim that raised, so none of these runs anywhere."""
        lost = self._lost_claims.get(worker_id)
        if not lost:
            return
        rows = await self._fetch("lost_claims", {"worker_id": worker_id, "nows": lost, "since": min(lost)})
        jobs = [_row_to_job(r) for r in rows]
        if jobs:
            await self.finish([rules.handed_back(j, j.lease_token or "") for j in jobs], time.time())
            log.info("PostgreSQL: handed back %d job(s) leased by a claim whose reply was lost: %s",
                     len(jobs), ", ".join(j.id for j in jobs))
        self._lost_claims.pop(worker_id, None)

    def _claim_params(self, names: list[str], limit: int, worker_id: str, now: float) -> dict[str, Any]:
        if self._listener is not None:
            self._marks[frozenset(names)] = self._listener.counter
        return {"queues": names, "limit": limit, "worker_id": worker_id, "now": now,
                "d_vt": _DEFAULTS.visibility_timeout}

    async def _leases(self, params: Mapping[str, Any], rows: list[Any]) -> list[Lease]:
        if rows and rows[0][-1]:  # limited jobs are ready: decide per key, in one transaction
            rows = await self._run(lambda conn: self._claim_limited(conn, params), transaction=True)
            rows.sort(key=lambda r: (-r[JOB_FIELDS.index("priority")], r[len(JOB_FIELDS)], r[0]))
        else:  # none is ready: no rate window to wait for (a past one would end every wait at once)
            self._retry_at = None
        leases = []
        for row in rows:
            if row[0] is None:  # the flag row of an empty claim
                continue
            job = _row_to_job(row)
            leases.append(Lease(job=job, token=job.lease_token or ""))
        return leases

    async def finish_and_claim(
        self, outcomes: Sequence[Outcome], queues: Sequence[str], limit: int, worker_id: str, now: float
    ) -> tuple[list[bool], list[Lease]]:
        """The finish and claim statements in one pipeline: one round trip, one transaction.

        Outcomes of jobs with dependents are applied right after, as ``finish`` does.
        """
        names = list(dict.fromkeys(queues))
        if not outcomes or limit <= 0 or not names:
            return await super().finish_and_claim(outcomes, queues, limit, worker_id, now)
        finish_params = self._finish_params(outcomes, now)
        claim_params = self._claim_params(names, limit, worker_id, now)
        await self._hand_back_lost(worker_id)

        async def go(conn: AConn) -> tuple[list[Any], list[Any]]:
            async with conn.pipeline():
                await conn.execute(_GENERIC)
                finished = await conn.execute(self.q["finish"], finish_params)
                claimed = await conn.execute(self.q["claim"], claim_params)
            return await finished.fetchall(), await claimed.fetchall()

        try:
            finished, claimed = await self._run(go)
            applied = await self._finish_rest(outcomes, {r[0] for r in finished}, finish_params, now)
            return applied, await self._leases(claim_params, claimed)
        except BaseException:
            self._claim_lost(worker_id, now)
            raise

    async def _claim_limited(self, conn: AConn, params: Mapping[str, Any]) -> list[Any]:
        """Claim past the jobs whose key is at its limit (they stay queued); see ``_Gate``."""
        limit = params["limit"]
        gate = _Gate(self, conn, params["now"])
        picked: list[str] = []
        fetch = limit * 4 + 16
        for _ in range(_LIMIT_ROUNDS):
            fetch = min(max(fetch, (limit - len(picked)) * 4 + 16), _MAX_FETCH)
            rows = await self._fetch("claim_candidates", {"queues": params["queues"], "limit": fetch,
                                                          "now": params["now"], "full": sorted(gate.full),
                                                          "picked": picked}, conn)
            if gate.full:  # looking past keys at their limits
                await gate.prefetch(rows)
            for job_id, key, concurrency, rate in rows:
                if await gate.admit(key, concurrency, rate):
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
            await self._fetch("log_starts", {"keys": [s[0] for s in gate.starts], "ats": [s[1] for s in gate.starts],
                                             "untils": [s[2] for s in gate.starts]}, conn)
        return await self._fetch("claim_picked", {**params, "ids": picked}, conn)

    async def heartbeat(self, worker: WorkerInfo, leases: Mapping[str, str], now: float) -> HeartbeatReply:
        ids = list(leases)
        rows = await self._fetch_hot("heartbeat", {
            "id": worker.id, "host": worker.host, "pid": worker.pid,
            "queues": serialization.dumps(list(worker.queues)), "concurrency": worker.concurrency,
            "running": serialization.dumps(list(worker.running)), "started_at": worker.started_at or now,
            "now": now, "ids": ids, "tokens": [leases[i] for i in ids], "d_vt": _DEFAULTS.visibility_timeout})
        return HeartbeatReply(lost=frozenset(r[0] for r in rows if not r[1]),
                              cancel_requested=frozenset(r[0] for r in rows if r[1] and r[2]))

    async def finish(self, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        if not outcomes:
            return []
        params = self._finish_params(outcomes, now)
        applied = {r[0] for r in await self._fetch_hot("finish", params)}
        return await self._finish_rest(outcomes, applied, params, now)

    def _finish_params(self, outcomes: Sequence[Outcome], now: float) -> dict[str, Any]:
        payload = serialization.dumps([{
            "job_id": o.job_id, "token": o.token, "status": str(o.status), "result": o.result,
            "error": dict(o.error) if o.error is not None else None, "scheduled_at": o.scheduled_at,
            "attempt": o.attempt, "uncount": o.uncount_delivery} for o in outcomes])
        return {"outcomes": payload, "ids": [o.job_id for o in outcomes], "now": now, "channel": self.channel,
                "guard": True, "hb_cancel": serialization.dumps(dict(CANCELLED_HANDED_BACK))}

    async def _finish_rest(self, outcomes: Sequence[Outcome], applied: set[str], params: Mapping[str, Any],
                           now: float) -> list[bool]:
        """Apply the outcomes the guarded statement left (``applied``: those it applied)."""
        if len(applied) < len(outcomes):
            # Jobs with dependents (or whose lease was lost): apply in one transaction with the
            # release/cancellation of their children.
            rest = {**params, "guard": False, "outcomes": serialization.dumps(
                [r for r in serialization.loads(params["outcomes"]) if r["job_id"] not in applied])}

            async def go(conn: AConn) -> set[str]:
                rows = await self._fetch("finish", rest, conn)
                done = [r[0] for r in rows if r[3] and r[1] == "succeeded"]
                failed = [r[0] for r in rows if r[3] and r[1] in _TERMINAL_FAIL]
                await self._after_terminal(conn, done, failed, now)
                found = {r[0] for r in rows}
                # Sent again after a reply lost with the connection: applied by the first send
                # (its token ended the delivery), not refused as if the lease had passed on.
                again = [r for r in serialization.loads(rest["outcomes"]) if r["job_id"] not in found]
                if again:
                    replayed = await self._fetch("finished_already", {
                        "outcomes": serialization.dumps(again), "ids": [r["job_id"] for r in again]}, conn)
                    found.update(r[0] for r in replayed)
                return found

            applied = applied | await self._run(go, transaction=True)
        return [o.job_id in applied for o in outcomes]

    async def _after_terminal(self, conn: AConn, succeeded: Sequence[str], failed: Sequence[str],
                              now: float) -> None:
        """In the caller's transaction: release children of ``succeeded``, cancel those of ``failed``."""
        if failed:
            await self._cascade(conn, failed, now)
        if succeeded:
            children = [r[0] for r in await self._fetch("lock_children", {"ids": list(succeeded)}, conn)]
            if children:
                released = await self._fetch("release_children", {"ids": children, "now": now}, conn)
                ready = sorted({r[1] for r in released if r[2] == "queued"})
                if ready:
                    await self._fetch("notify", {"channel": self.channel, "queues": ready}, conn)
                due = _announcements((r[1], r[3]) for r in released if r[2] == "scheduled")
                if due:
                    await self._fetch("notify", {"channel": self.due_channel, "queues": due}, conn)

    async def _cascade(self, conn: AConn, ended: Sequence[str], now: float) -> None:
        """Cancel the waiting dependents of ``ended``, transitively, until none is left.

        One ``cascade_cancel`` walks the tree its snapshot saw, taken before it waits on a
        child's row lock; an enqueue that holds that lock (``mark_parents``) meanwhile commits a
        grandchild and its edge, which that snapshot misses. Each further statement takes a new
        snapshot after those commits, so we go again from the jobs just cancelled. Later
        enqueues lock a cancelled row after us and find it cancelled (their child is too).
        """
        frontier = list(ended)
        while frontier:
            frontier = [r[0] for r in await self._fetch("cascade_cancel", {"ids": frontier, "now": now}, conn)]

    async def set_progress(self, job_id: str, token: str, progress: Mapping[str, Any], now: float) -> bool:
        try:
            text = serialization.dumps(dict(progress))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"progress must be JSON: {exc}") from exc
        rows = await self._fetch("set_progress", {"id": job_id, "token": token, "progress": text, "now": now})
        return bool(rows)

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return on a notification for ``queues``, when their first delayed or retrying job
        comes due, or after ``timeout``."""
        if self._pool is None:
            raise BackendUnavailable("the PostgreSQL backend is not open")
        key = frozenset(queues)
        listener = self._listener
        if listener is None:
            listener = self._listener = _Listener(self.conninfo, self.channel, self.due_channel,
                                                  self.application_name)
        listener.start()  # (re)starts a listener task that is not running
        mark = self._marks.get(key, 0)
        end = time.time() + timeout
        if self._retry_at is not None:  # a rate-limited job left queued may start then
            end = min(end, self._retry_at)
        # Registered before the due time is read: an announcement made meanwhile is not missed.
        with listener.waiter(key) as waiter:
            if not listener.changed_since(mark, key) and end > time.time():
                waiter.due = min(waiter.due, await self._next_due(key, listener))
                while not listener.changed_since(mark, key):
                    left = min(end, waiter.due) - time.time()
                    if left <= 0:
                        break
                    await waiter.sleep(left)
                # what the waiter learnt, valid until the next announcement for these queues
                self._due[key] = (listener.counter, waiter.due)
        self._marks[key] = listener.counter

    async def _next_due(self, key: frozenset[str], listener: _Listener) -> float:
        """When the first delayed or retrying job of the unpaused queues of ``key`` comes due
        (``inf``: none). Read again only once the one known has passed or a due time of these
        queues was announced since, so an idle worker does not query on every turn."""
        now = time.time()
        known = self._due.get(key)
        if known is not None and known[1] > now and not listener.announced_since(known[0], key):
            return known[1]
        mark = listener.counter
        [(due,)] = await self._fetch("next_due", {"queues": sorted(key), "now": now})
        first = math.inf if due is None else float(due)
        self._due[key] = (mark, first)
        return first

    # -- reads --------------------------------------------------------------------------
    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        if not ids:
            return []
        found = {j.id: j for j in map(_row_to_job, await self._fetch("select_jobs", {"ids": list(ids)}))}
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    async def list_jobs(self, query: JobQuery) -> Page:
        limit = max(1, min(int(query.limit), 1000))
        where: list[str] = ["TRUE"]
        params: dict[str, Any] = {"limit": limit + 1}
        for name in ("status", "task", "queue"):
            value = getattr(query, name)
            if value is not None:
                where.append(f"j.{name} = %({name})s")
                params[name] = str(value)
        if query.cursor:
            params["c_at"], params["c_id"] = _decode_cursor(query.cursor)
            where.append("(j.created_at, j.id) < (%(c_at)s, %(c_id)s)")
        text = self.q["list_jobs"].replace("__WHERE__", " AND ".join(where))

        async def go(conn: AConn) -> list[Any]:
            cur = await conn.execute(text, params)
            return await cur.fetchall()

        jobs = [_row_to_job(r) for r in await self._run(go)]
        cursor = _encode_cursor(jobs[limit - 1].created_at, jobs[limit - 1].id) if len(jobs) > limit else None
        return Page(items=jobs[:limit], next_cursor=cursor)

    async def revisions(self, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        return {r[0]: int(r[1]) for r in await self._fetch("revisions", {"ids": list(ids)})}

    # -- admin --------------------------------------------------------------------------
    async def cancel(self, job_id: str, now: float) -> Job | None:
        async def go(conn: AConn) -> Job | None:
            rows = await self._fetch("cancel", {"id": job_id, "now": now}, conn)
            if rows and rows[0][0] == "cancelled" and rows[0][1]:
                await self._after_terminal(conn, (), [job_id], now)
            found = await self._fetch("select_jobs", {"ids": [job_id]}, conn)
            return _row_to_job(found[0]) if found else None

        return await self._run(go, transaction=True)

    async def requeue(self, queue: str | None, ids: Sequence[str] | None, statuses: Sequence[Status],
                      now: float) -> list[Job]:
        """Put jobs in ``statuses`` back: ``queued``, or ``waiting`` while a parent is pending. A
        job of ``ids`` whose parent ended badly refuses the call (``InvalidTransition``); a whole
        queue's redrive leaves such jobs as they are."""
        if not statuses or (ids is not None and not ids):
            return []
        where = ["j.status = ANY(%(statuses)s::text[])"]
        params: dict[str, Any] = {"statuses": [str(s) for s in statuses], "now": now, "channel": self.channel}
        if queue is not None:
            where.append("j.queue = %(queue)s")
            params["queue"] = queue
        if ids is not None:
            where.append("j.id = ANY(%(ids)s::text[])")
            params["ids"] = list(ids)
        candidates = self.q["requeue_candidates"].replace("__WHERE__", " AND ".join(where))
        text = self.q["requeue"].replace("__WHERE__", " AND ".join(where))

        async def go(conn: AConn) -> list[Any]:
            found = await (await conn.execute(candidates, params)).fetchall()
            picked, waiting = await self._by_parents(conn, found, refuse=ids is not None)
            if not picked:
                return []
            cur = await conn.execute(text, {**params, "picked": picked, "waiting": waiting})
            return await cur.fetchall()

        return [_row_to_job(r) for r in await self._run(go, transaction=True)]

    async def _by_parents(self, conn: AConn, found: Sequence[Any], refuse: bool) -> tuple[list[str], list[str]]:
        """The ids of ``found`` (``(id, depends_on)`` rows) to requeue, and those of them that
        wait for a pending parent (``rules.retry_by_parents``).

        The parents are locked (``mark_parents``, in id order, as enqueue does): a parent that
        finishes meanwhile waits for this transaction, then releases or cancels what waits on it.
        """
        deps = {job_id: list(depends_on or []) for job_id, depends_on in found}
        parents = sorted({p for ps in deps.values() for p in ps})
        status = {r[0]: r[1] for r in await self._fetch("mark_parents", {"ids": parents}, conn)} if parents else {}
        ready, waiting = rules.retry_by_parents(deps, status, refuse)
        return ready + waiting, waiting

    async def purge(self, queue: str, now: float) -> int:
        async def go(conn: AConn) -> int:
            rows = await self._fetch("purge", {"queue": queue, "now": now}, conn)
            parents = [r[0] for r in rows if r[1]]
            if parents:
                await self._after_terminal(conn, (), parents, now)
            return len(rows)

        return await self._run(go, transaction=True)

    async def queue_settings(self, name: str) -> QueueSettings:
        rows = await self._fetch("get_queue", {"name": name})
        return self._settings(rows[0]) if rows else QueueSettings()

    @staticmethod
    def _settings(row: Sequence[Any]) -> QueueSettings:
        return QueueSettings(retention=float(row[0]), visibility_timeout=float(row[1]),
                             max_deliveries=int(row[2]), result_ttl=float(row[3]), paused=bool(row[4]))

    async def save_queue_settings(self, name: str, settings: QueueSettings,
                                  fields: Collection[str] | None = None) -> None:
        settings = settings.validated()
        named = [f for f in _QUEUE_SETTINGS if fields is None or f in fields]
        assignments = ", ".join(f"{f} = EXCLUDED.{f}" for f in named) or "name = q.name"
        text = self.q["save_queue"].replace("__SET__", assignments)

        async def go(conn: AConn) -> None:
            cur = await conn.execute(text, {"name": name, **settings.to_json()})
            await cur.fetchall()
            if not settings.paused:  # its jobs may be ready, and its delayed ones count again
                await self._fetch("notify", {"channel": self.channel, "queues": [name]}, conn)
                await self._fetch("notify", {"channel": self.due_channel,
                                             "queues": _announcements([(name, time.time())])}, conn)

        await self._run(go, transaction=True)

    async def queues(self, names: Sequence[str] | None = None) -> list[QueueInfo]:
        async def go(conn: AConn) -> tuple[list[Any], list[Any]]:
            settings = await self._fetch("all_queue_settings", {}, conn)
            counts = await self._fetch("queue_counts", {"names": list(names) if names is not None else None}, conn)
            return settings, counts

        settings_rows, count_rows = await self._run(go)
        settings = {r[0]: self._settings(r[1:]) for r in settings_rows}
        counts: dict[str, dict[str, int]] = {}
        for queue, status, n in count_rows:
            counts.setdefault(queue, {})[status] = int(n)
        known = list(names) if names is not None else sorted(set(settings) | set(counts))
        return [QueueInfo(name=n, settings=settings.get(n, QueueSettings()), counts=counts.get(n, {}))
                for n in dict.fromkeys(known)]

    # -- webhooks -------------------------------------------------------------------------
    async def due_webhooks(self, now: float, limit: int, lease: float) -> list[tuple[Job, int]]:
        rows = await self._fetch("due_webhooks", {"now": now, "limit": limit, "lease": lease})
        jobs = [(_row_to_job(r), int(r[len(JOB_FIELDS)])) for r in rows]
        return sorted(jobs, key=lambda item: (item[0].finished_at or 0.0, item[0].id))

    async def webhook_attempted(self, job_id: str, delivered: bool, next_at: float | None) -> None:
        await self._fetch("webhook_attempted", {"id": job_id, "done": delivered or next_at is None,
                                                "next_at": next_at})

    # -- housekeeping and registry -------------------------------------------------------
    async def sweep(self, now: float, limit: int = 500) -> SweepReport:
        async def leases(conn: AConn) -> tuple[int, int]:
            rows = await self._fetch("sweep_leases", {"now": now, "limit": limit,
                                                      "d_md": _DEFAULTS.max_deliveries,
                                                      "lost_cancel": serialization.dumps(dict(CANCELLED_LOST))},
                                     conn)
            woken = sorted({r[2] for r in rows if r[1] == "queued" or r[4] is not None})  # (a freed limit slot)
            if woken:
                await self._fetch("notify", {"channel": self.channel, "queues": woken}, conn)
            # A lost lease ends queued, failed (delivery limit) or cancelled (a cancel was requested:
            # stored, so never run again; no SweepReport field counts it).
            requeued = sum(1 for r in rows if r[1] == "queued")
            dead = sum(1 for r in rows if r[1] == "failed")
            await self._after_terminal(conn, (), [r[0] for r in rows if r[1] in ("failed", "cancelled") and r[3]], now)
            return requeued, dead

        async def retention(conn: AConn) -> int:
            rows = await self._fetch("sweep_retention", {"now": now, "limit": limit,
                                                         "d_ret": _DEFAULTS.retention}, conn)
            await self._after_terminal(conn, (), [r[0] for r in rows if r[1]], now)
            return len(rows)

        async def ttl(conn: AConn) -> int:
            cur = await conn.execute(self.q["sweep_ttl"], {"now": now, "limit": limit,
                                                          "d_ttl": _DEFAULTS.result_ttl})
            return max(cur.rowcount, 0)

        async def workers(conn: AConn) -> int:
            cur = await conn.execute(self.q["sweep_workers"], {"cutoff": now - self.WORKER_TTL, "limit": limit})
            await conn.execute(self.q["prune_limit_starts"], {"now": now, "limit": limit})
            return max(cur.rowcount, 0)

        requeued, dead = await self._run(leases, transaction=True)
        expired = await self._run(retention, transaction=True)
        deleted = await self._run(ttl)
        dropped = await self._run(workers)
        return SweepReport(requeued=requeued, dead=dead, expired=expired, deleted=deleted,
                           workers_dropped=dropped)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._hand_back_lost(worker_id)
        await self._fetch("unregister_worker", {"id": worker_id})

    async def workers(self, now: float) -> list[WorkerInfo]:
        rows = await self._fetch("workers", {"cutoff": now - self.WORKER_TTL})
        return [WorkerInfo(id=r[0], host=r[1], pid=int(r[2]), queues=tuple(r[3]), concurrency=int(r[4]),
                           running=tuple(r[5]), started_at=float(r[6]), last_heartbeat=float(r[7]))
                for r in rows]
