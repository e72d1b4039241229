"""The PostgreSQL engine: psycopg 3 (async) with a connection pool, LISTEN/NOTIFY for wake-ups.

One URL: ``postgresql://user@host:5432/db?schema=conveyor``. The ``schema`` parameter (default
``conveyor``) names the PostgreSQL schema that holds Conveyor's tables; ``pool_min``/``pool_max``
size the pool and ``pool_timeout`` bounds the wait for a connection (seconds). All other
parameters go to libpq unchanged.

Every query is schema-qualified, so :meth:`PostgresBackend.enqueue_in` works on any connection of
the caller's, whatever its ``search_path``. Times are stored as epoch seconds (``double precision``).

This module is the backend's calls and their plumbing (the pool, retries, outages); beside it:
``connection`` (the URL), ``statements`` (the SQL files), ``rows`` (Jobs as rows), ``enqueue``
(what an enqueue writes), ``limits`` (claims of limited jobs), ``wakeups`` (LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool

from conveyor import serialization
from conveyor.backends.base import (
    Backend,
    Enqueued,
    HeartbeatReply,
    JobQuery,
    Lease,
    Outcome,
    Page,
    QueueInfo,
    SweepReport,
    WorkerInfo,
)
from conveyor.backends.coalescer import Coalescer
from conveyor.backends.postgres import enqueue
from conveyor.backends.postgres.connection import UNAVAILABLE, AConn, parse_url
from conveyor.backends.postgres.enqueue import TERMINAL_FAIL, Insert, StatusAndError
from conveyor.backends.postgres.limits import Gate
from conveyor.backends.postgres.rows import (
    ADAPTERS,
    JOB_FIELDS,
    decode_cursor,
    encode_cursor,
    queue_settings_of,
    row_to_job,
    worker_of,
)
from conveyor.backends.postgres.statements import load_queries, migrate
from conveyor.backends.postgres.wakeups import Listener, announcements
from conveyor.core import rules
from conveyor.core.errors import BackendUnavailable, ConfigurationError, ValidationError
from conveyor.core.job import CANCELLED_HANDED_BACK, CANCELLED_LOST, Job, Status
from conveyor.core.queues import QueueSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Failed claims of a worker remembered for ``_hand_back_lost`` (one per retry of an outage: its
#: backoff is capped at a few seconds); the oldest leases have expired by then anyway.
_LOST_CLAIMS_KEPT = 256
_DEFAULTS = QueueSettings()
_QUEUE_SETTINGS = ("retention", "visibility_timeout", "max_deliveries", "result_ttl", "paused")
_RETRYABLE = (psycopg.errors.TransactionRollback,)

#: Sent ahead of a statement of the job path, in the same pipeline (see ``_fetch_hot``).
_GENERIC = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"
_DURABLE = ("SELECT set_config('plan_cache_mode', 'force_generic_plan', true), "
            "set_config('synchronous_commit', 'on', true)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class PostgresBackend(Backend):
    """Conveyor's jobs, leases and queues in PostgreSQL (one schema per installation)."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 5.0) -> None:
        server = parse_url(url, min_size=min_size, max_size=max_size, timeout=timeout)
        self.url = url
        self.schema, self.conninfo, self._where = server.schema, server.conninfo, server.where
        self._min_size, self._max_size, self._timeout = server.min_size, server.max_size, server.timeout
        self.channel = f"conveyor_{self.schema}"
        #: Due times of delayed and retrying jobs (``<queue> <due>``); ':' cannot be in a schema name.
        #: (The statements that notify it name it ``%(channel)s || ':due'``.)
        self.due_channel = f"{self.channel}:due"
        self.application_name = f"conveyor:{self.schema}"
        self._schema_ident = '"' + self.schema + '"'
        self.q = load_queries(self._schema_ident)
        self._pool: AsyncConnectionPool[AConn] | None = None
        self._listener: Listener | None = None
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
        self._probe_timeout = server.probe_timeout
        #: worker id -> the ``now`` of its claims that failed without a reply: the engine may have
        #: committed them (the connection dropped after the commit). See ``_hand_back_lost``.
        self._lost_claims: dict[str, list[float]] = {}
        #: concurrent enqueues of jobs without parents, stored together (one durable commit a batch)
        self._inserts: Coalescer[Insert, Enqueued] = Coalescer(
            self._insert_together, lambda insert: len(insert.jobs))

    # -- plumbing -----------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"PostgreSQL at {self._where} is unavailable: {_first_line(exc)}")

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (BackendUnavailable, psycopg.errors.TransactionRollback):
            raise
        except UNAVAILABLE as exc:
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
        except UNAVAILABLE as exc:
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
            kwargs={"autocommit": True, "context": ADAPTERS, "application_name": self.application_name,
                    "options": f"-c search_path={self.schema},public -c synchronous_commit=off"},
            open=False, name=f"conveyor-{self.schema}", reconnect_timeout=0)
        try:
            await self._probe_once()  # fails at once, with libpq's reason, when the server is down
            await pool.open(wait=True, timeout=self._timeout)
        except UNAVAILABLE as exc:
            await pool.close()
            raise self._unavailable(exc) from exc
        self._pool = pool
        try:
            await self._run(lambda conn: migrate(conn, self.schema, self._schema_ident))
        except BaseException:
            self._pool = None
            await pool.close()
            raise

    async def _start_listening(self) -> None:
        """Start the listener, before this process's first claim: a notification sent after a
        claim then reaches the next wait. Not at open: a process that only enqueues (a web app,
        each thread of it with a backend of its own) holds no listening connection, and is not
        sent every job's notification by PostgreSQL."""
        self._listener = Listener(self.conninfo, self.channel, self.due_channel, self.application_name)
        self._listener.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listener.ready.wait(), self._timeout)

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

    async def setup_warnings(self) -> list[str]:
        async def fsync(conn: AConn) -> str:
            row = await (await conn.execute("SELECT current_setting('fsync')")).fetchone()
            return str(row[0]) if row else "on"

        if await self._run(fsync) == "off":
            return [f"PostgreSQL at {self._where} runs with fsync off: a crash of its host may lose or corrupt "
                    "every job; turn fsync on"]
        return []

    # -- submit -------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        if not jobs:
            return []
        if any(j.depends_on for j in jobs):
            return await self._run(lambda conn: self._enqueue(conn, jobs), transaction=True)
        # No dependencies: one statement, committed durably, in one round trip, shared with the
        # callers that enqueue meanwhile (``_insert_together``).
        _, params = enqueue.insert_params(jobs, {}, {}, time.time(), self.channel)
        return await self._inserts.submit(Insert(jobs, params))

    async def _insert_together(self, inserts: Sequence[Insert]) -> list[Enqueued | BaseException]:
        """Store the jobs of concurrent callers in one statement. A stored job found by id or
        idempotency key (another caller's, maybe in the same statement) is read by a later
        statement, as READ COMMITTED would in the same transaction. If the statement fails for
        a reason other than an outage, each caller is sent again alone: its mistake is its own."""
        try:
            rows = await self._fetch_hot("insert_jobs", enqueue.inserted_together(inserts), durable=True)
        except BackendUnavailable:
            raise
        except Exception:
            if len(inserts) == 1:
                raise
            alone: list[Enqueued | BaseException] = []
            for i in inserts:
                try:
                    alone += await self._insert_together([i])
                except Exception as exc:
                    alone.append(exc)
            return alone
        inserted = {row[0]: row_to_job(row) for row in rows}
        missing = [j for i in inserts for j in i.jobs if j.id not in inserted]
        existing = await self._run(lambda conn: self._lookup_existing(conn, missing)) if missing else {}
        out: list[Enqueued | BaseException] = []
        for i in inserts:
            try:
                out.append(enqueue.enqueued(i.jobs, inserted, existing))
            except BackendUnavailable as exc:
                out.append(exc)
        return out

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
        statuses: dict[str, StatusAndError] = {}
        if any(j.depends_on for j in jobs):
            keys = [j.idempotency_key for j in jobs if j.idempotency_key is not None]
            if keys:
                stored = {s.idempotency_key: s for s in map(row_to_job, await self._fetch(
                    "select_by_keys", {"keys": keys}, conn))}
                existing = {j.id: stored[j.idempotency_key] for j in jobs
                            if j.idempotency_key is not None and j.idempotency_key in stored}
            statuses = await self._dependency_statuses(conn, jobs, existing, now)
        records, params = enqueue.insert_params(jobs, existing, statuses, now, self.channel)
        rows = await self._fetch("insert_jobs", params, conn) if records else []
        inserted = {row[0]: row_to_job(row) for row in rows}
        deps = [(p, r["id"]) for r in records if r["id"] in inserted for p in dict.fromkeys(r["depends_on"])]
        if deps:
            await self._fetch("insert_deps", {"parents": [p for p, _ in deps], "children": [c for _, c in deps]},
                              conn)
        missing = [j for j in jobs if j.id not in inserted and j.id not in existing]
        if missing:
            existing.update(await self._lookup_existing(conn, missing))
        return enqueue.enqueued(jobs, inserted, existing)

    async def _lookup_existing(self, conn: AConn, jobs: Sequence[Job]) -> dict[str, Job]:
        keys = [j.idempotency_key for j in jobs if j.idempotency_key is not None]
        by_key = {s.idempotency_key: s for s in map(row_to_job, await self._fetch(
            "select_by_keys", {"keys": keys}, conn))} if keys else {}
        by_id = {s.id: s for s in map(row_to_job, await self._fetch(
            "select_jobs", {"ids": [j.id for j in jobs]}, conn))}
        found: dict[str, Job] = {}
        for job in jobs:
            stored = by_key.get(job.idempotency_key) if job.idempotency_key is not None else None
            stored = stored or by_id.get(job.id)
            if stored is not None:
                found[job.id] = stored
        return found

    async def _dependency_statuses(self, conn: AConn, jobs: Sequence[Job], existing: Mapping[str, Job],
                                   now: float) -> dict[str, StatusAndError]:
        """Per new job with parents: its status from its parents' (``enqueue.dependency_statuses``)."""
        outside = enqueue.outside_parents(jobs, existing)
        parent_status: dict[str, str] = {}
        if outside:
            parent_status = {r[0]: r[1] for r in await self._fetch("mark_parents", {"ids": outside}, conn)}
        return enqueue.dependency_statuses(jobs, existing, parent_status, now)

    # -- leasing ------------------------------------------------------------------------
    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: float) -> list[Lease]:
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            return []
        if self._listener is None:
            await self._start_listening()
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
        jobs = [row_to_job(r) for r in rows]
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
            job = row_to_job(row)
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
        if self._listener is None:
            await self._start_listening()
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
        """Claim past the jobs whose key is at its limit (they stay queued); see ``Gate``."""
        gate = Gate(self, conn, params["now"])
        picked = await gate.pick(params["queues"], params["limit"], params["now"])
        self._retry_at = gate.windows.retry_at
        if not picked:
            return []
        await gate.log_starts()
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
                failed = [r[0] for r in rows if r[3] and r[1] in TERMINAL_FAIL]
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
                due = announcements((r[1], r[3]) for r in released if r[2] == "scheduled")
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
        if self._listener is None:
            await self._start_listening()
        listener = self._listener
        assert listener is not None
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

    async def _next_due(self, key: frozenset[str], listener: Listener) -> float:
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
        found = {j.id: j for j in map(row_to_job, await self._fetch("select_jobs", {"ids": list(ids)}))}
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
            params["c_at"], params["c_id"] = decode_cursor(query.cursor)
            where.append("(j.created_at, j.id) < (%(c_at)s, %(c_id)s)")
        text = self.q["list_jobs"].replace("__WHERE__", " AND ".join(where))

        async def go(conn: AConn) -> list[Any]:
            cur = await conn.execute(text, params)
            return await cur.fetchall()

        jobs = [row_to_job(r) for r in await self._run(go)]
        cursor = encode_cursor(jobs[limit - 1].created_at, jobs[limit - 1].id) if len(jobs) > limit else None
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
            return row_to_job(found[0]) if found else None

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

        return [row_to_job(r) for r in await self._run(go, transaction=True)]

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
        return queue_settings_of(rows[0]) if rows else QueueSettings()

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
                                             "queues": announcements([(name, time.time())])}, conn)

        await self._run(go, transaction=True)

    async def queues(self, names: Sequence[str] | None = None) -> list[QueueInfo]:
        async def go(conn: AConn) -> tuple[list[Any], list[Any]]:
            settings = await self._fetch("all_queue_settings", {}, conn)
            counts = await self._fetch("queue_counts", {"names": list(names) if names is not None else None}, conn)
            return settings, counts

        settings_rows, count_rows = await self._run(go)
        settings = {r[0]: queue_settings_of(r[1:]) for r in settings_rows}
        counts: dict[str, dict[str, int]] = {}
        for queue, status, n in count_rows:
            counts.setdefault(queue, {})[status] = int(n)
        known = list(names) if names is not None else sorted(set(settings) | set(counts))
        return [QueueInfo(name=n, settings=settings.get(n, QueueSettings()), counts=counts.get(n, {}))
                for n in dict.fromkeys(known)]

    # -- webhooks -------------------------------------------------------------------------
    async def due_webhooks(self, now: float, limit: int, lease: float) -> list[tuple[Job, int]]:
        rows = await self._fetch("due_webhooks", {"now": now, "limit": limit, "lease": lease})
        jobs = [(row_to_job(r), int(r[len(JOB_FIELDS)])) for r in rows]
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
        return [worker_of(r) for r in rows]
