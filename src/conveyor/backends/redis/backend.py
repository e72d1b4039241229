"""The Redis engine: job records in hashes, sorted sets as indexes, every state change in Lua.

URL: ``redis://[user:password@]host:6379/0?prefix=conveyor`` (``rediss://`` for TLS) for one
server (a primary, with replicas or Sentinel in front as you like), or
``redis+cluster://[user:password@]host:7000/?prefix=conveyor`` (``rediss+cluster://``) for a
Redis Cluster: any one node; the client discovers the others and follows MOVED/ASK redirects.
``prefix`` (default ``conveyor``) namespaces the keys of one app; other query parameters go to
redis-py.

Key layout (P = prefix, Q = queue name). EVERY key of one installation carries the single hash
tag ``{P}``, so on a cluster all of an app's keys live in one slot and every script (which may
touch a queue's keys, another queue's dependents, the by-id directory and global limits at once)
is single-slot. Queue names never contain ``/``, so ``{P}:q/<Q>/`` is an unambiguous queue prefix:

==========================  ======  ==========================================================
``{P}:q/Q/j:<id>``          hash    the job record: plain fields, JSON for args, kwargs,
                                    progress, result, error, metadata, depends_on; internal
                                    ``_ra`` (when it last became ready), ``_ord`` (ready order,
                                    ms), ``_np`` (parents not yet succeeded)
``{P}:q/Q/ready``           zset    queued jobs, score ``(9 - priority) * 1e13 + _ord``, so
                                    ZRANGE 0 n is 9→0 priority, then oldest first
``{P}:q/Q/sched``           zset    scheduled and retrying jobs by ``scheduled_at`` (ms)
``{P}:q/Q/lease``           zset    running jobs by ``lease_expires_at`` (ms)
``{P}:q/Q/done``            zset    terminal jobs by ``finished_at`` (ms), for ``result_ttl``
``{P}:q/Q/i``               zset    every job of the queue (score 0, lex order = UUIDv7 order)
``{P}:q/Q/s:<status>``      zset    the queue's jobs in one status (lex index; ZCARD = count)
``{P}:q/Q/c:<id>``          set     waiting children of job ``<id>``
``{P}:q/Q/cfg``             hash    queue settings
``{P}:q/Q/wake``            list    wake-up tokens; idle workers BLPOP on them (trimmed back
                                    to 64 once longer than 96)
``{P}:jq``                  hash    job id → queue (the directory every by-id script reads)
``{P}:queues``              set     known queue names
``{P}:t:<task>``            zset    every job of the task (score 0, lex order; listing)
``{P}:idem``                hash    idempotency key → job id (deleted with the job)
``{P}:wh`` / ``{P}:wha``    zset /  webhook outbox by next attempt (ms) / attempts made
                            hash
``{P}:workers``/``wseen``   hash /  worker id → JSON / worker id by last heartbeat
                            zset
``{P}:lr:<key>``            set     running job ids of limit key ``<key>`` (concurrency limit)
``{P}:ls:<key>``            zset    starts of limit key ``<key>`` within its rate window (ms)
``{P}:lc:<base>``           string  what a claim leased, ``id token id token ...``, for as long as
                                    its leases (handed back if its reply is lost)
==========================  ======  ==========================================================

There is no app-wide index of every job or of a status: listing all jobs, or one status, merges
the per-queue indexes (``{P}:q/Q/i``, ``{P}:q/Q/s:<st>``) of the known queues, newest first, so a
status change is one index write, not two, and an enqueue writes two id indexes, not three.

Every state change is one Lua script (``lua/*.lua``, with ``lua/_common.lua`` prepended), loaded
once per connection lifetime and called by EVALSHA with KEYS[1] = ``{P}:jq``, which routes the
call to the node owning the ``{P}`` slot (the script builds its other keys from the prefix; they
share the tag). A NOSCRIPT reply, e.g. after a server restart or a failover, reloads the scripts.
The trade-off on a cluster: one installation's data and load sit on one primary (the slot's);
the cluster scales by running several installations (prefixes), which spread over the slots.
A finer per-queue tag cannot keep every script single-slot: dependencies cross queues, limits
are global, and the by-id directory, idempotency keys and listing indexes span all queues.

Claim of N jobs, finish of N outcomes and heartbeat of N leases are one round trip each.
``wait_for_work`` BLPOPs the queues' wake lists on a separate connection pool, so a blocked
waiter never holds a connection the other calls need.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from typing import Any, cast

import redis
import redis.asyncio as aioredis
import redis.cluster
import redis.retry
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, NoScriptError, RedisClusterException, ResponseError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.backends import cursors
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
from conveyor.backends.group_commit import GroupCommit
from conveyor.backends.redis.kept import Kept
from conveyor.backends.redis.packing import with_hiredis_packing
from conveyor.backends.redis.records import (
    float_arg,
    job_from_hash,
    pairs_to_dict,
    settings_from_hash,
    worker_entry,
    worker_from_entry,
)
from conveyor.backends.redis.scripts import claim_args, finish_args, sources
from conveyor.backends.redis.submissions import Submission, payload, sent_together, sent_together_async
from conveyor.backends.redis.url import database_refused, parse_url
from conveyor.core.errors import BackendUnavailable, ConfigurationError, InvalidTransition
from conveyor.core.job import Job, Status
from conveyor.core.queues import QueueSettings
from conveyor.core.rules import blocked
from conveyor.serialization import dumps

_BATCH = 500  #: jobs per script call for admin operations (requeue, purge)
_LIST_BUDGET = 5000  #: index entries one list page examines at most


#: Claims of one worker remembered for ``_hand_back_lost`` (one per retry of an outage: its backoff
#: is capped at a few seconds); the oldest leases have expired by then anyway.
_LOST_CLAIMS_KEPT = 256

log = logging.getLogger(__name__)

#: How long opening and ``ping`` wait for Redis to answer. Calls have no socket timeout (see
#: ``_client``), and an engine that accepts connections but never answers (a proxy in front of a
#: dead server) answers keepalives too: without this, a server would never start serving.
ANSWER_WITHIN = 5.0

#: TCP keepalive: probe an idle connection after 5 s, every 2 s, and drop it after 3 unanswered;
#: and drop one whose sent data stays unacknowledged for 11 s (Linux; elsewhere the OS defaults).
_KEEPALIVE = {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3,
              socket.TCP_USER_TIMEOUT: 11_000} if hasattr(socket, "TCP_USER_TIMEOUT") else {}


class RedisBackend(Backend):
    """Conveyor's Redis engine (see the module docstring for the key layout)."""

    #: Seconds for which a claim's view of its queues' schedules stands in for a read before a wait.
    DUE_SEEN_FRESH = 0.05

    def __init__(self, url: str) -> None:
        parsed = parse_url(url)
        self.url = url
        self.prefix = parsed.prefix
        #: a Redis Cluster (``redis+cluster://``): RedisCluster clients, no MULTI pipelines
        self.cluster = parsed.cluster
        self._anchor = f"{{{self.prefix}}}:jq"  #: KEYS[1] of every script: routes it to the {P} slot
        #: ends this backend's ``wait_for_work`` early (``end_wait``)
        self._end_key = f"{{{self.prefix}}}:ew:{secrets.token_hex(8)}"
        self._url = parsed
        self._redis_url = parsed.client_url
        self._where = parsed.where
        self._r: aioredis.Redis | RedisCluster | None = None
        self._block: aioredis.Redis | RedisCluster | None = None
        self._src: dict[str, str] = {}
        self._sha: dict[str, str] = {}
        #: concurrent async enqueues, sent together
        self._coalescer: Coalescer[Submission, Enqueued] = Coalescer(
            self._enqueue_batch, lambda sub: len(sub.jobs))
        #: When a rate-limited job that the last claim left queued may start (wakes ``wait_for_work``).
        self._retry_at: float | None = None
        #: What the last claim saw of its queues' schedules: (monotonic time, queues, when the first
        #: scheduled job comes due or None). A wait right after it needs no round trip to learn that.
        self._due_seen: tuple[float, tuple[str, ...], float | None] | None = None
        #: the blocking client of ``enqueue_blocking`` (thread-safe), made on first use
        self._sync: redis.Redis | redis.cluster.RedisCluster | None = None
        self._sync_lock = threading.Lock()
        self._sync_sha = ""  #: of the enqueue script (EVALSHA needs no round trip to learn it)
        #: connections of the blocking client kept for a sync enqueue loop and an idle worker's wait
        self._kept_enqueue = Kept()
        self._kept_wait = Kept()
        #: Token bases of claims that raised, per worker: what they leased (if their reply was
        #: lost after the script ran) is handed back at that worker's next claim or stop (``_hand_back_lost``).
        self._lost_claims: dict[str, list[str]] = {}
        self._lost_lock = threading.Lock()  # a pool thread's wait_and_claim_blocking adds to it
        #: concurrent sync enqueues, sent together
        self._enqueue_group: GroupCommit[Submission, Enqueued] = GroupCommit(
            self._enqueue_batch_blocking, lambda sub: len(sub.jobs))

    # -- plumbing -----------------------------------------------------------------------
    def _client(self, blocking: bool) -> aioredis.Redis | RedisCluster:
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
        # No socket_timeout: with one, redis-py (8.2) swallows most cancels of a task that is
        # inside a call, so a stop or a timeout around the call could hang. A silent peer is
        # found by TCP keepalive instead (about 11 s), a dead or restarted one by its reset.
        options: dict[str, Any] = dict(
            decode_responses=True, retry=retry, retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_connect_timeout=5.0, socket_timeout=None, health_check_interval=0 if blocking else 30,
            socket_keepalive=True, socket_keepalive_options=_KEEPALIVE)
        if self.cluster:
            return RedisCluster.from_url(self._redis_url, **options)
        return with_hiredis_packing(aioredis.Redis.from_url(self._redis_url, **options))

    def _sync_client(self) -> redis.Redis | redis.cluster.RedisCluster:
        with self._sync_lock:
            if self._sync is None:
                self._load_sources()
                retry = redis.retry.Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
                # Retried: a refused or reset connection (a restart: the next try reconnects at
                # once). Not retried: a timeout, or a silent engine would hold the caller 4 × 10 s.
                options: dict[str, Any] = dict(
                    decode_responses=True, retry=retry, retry_on_error=[RedisConnectionError],
                    socket_connect_timeout=5.0, socket_timeout=10.0, socket_keepalive=True)
                if self.cluster:
                    self._sync = redis.cluster.RedisCluster.from_url(self._redis_url, **options)
                else:
                    self._sync = with_hiredis_packing(redis.Redis.from_url(self._redis_url, **options))
                self._sync_sha = hashlib.sha1(self._src["enqueue"].encode()).hexdigest()
            return self._sync

    @property
    def r(self) -> aioredis.Redis | RedisCluster:
        if self._r is None:
            raise BackendUnavailable("the redis backend is not open")
        return self._r

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, ClusterError,
                SlotNotCoveredError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BackendUnavailable(f"{self._where} is unreachable: {detail}") from exc

    def _gk(self, name: str) -> str:
        return f"{{{self.prefix}}}:{name}"

    def _qk(self, queue: str, name: str) -> str:
        return f"{{{self.prefix}}}:q/{queue}/{name}"

    def _load_sources(self) -> None:
        if not self._src:
            self._src = sources()

    async def _load_scripts(self) -> None:
        for name, src in self._src.items():
            self._sha[name] = await self.r.script_load(src)

    async def _run(self, name: str, *args: Any) -> Any:
        """EVALSHA a script with KEYS = {P}:jq, ARGV = prefix, *args (reloading it after NOSCRIPT)."""
        with self._guard():
            try:
                return await self.r.evalsha(self._sha[name], 1, self._anchor, self.prefix, *args)
            except NoScriptError:
                await self._load_scripts()
                return await self.r.evalsha(self._sha[name], 1, self._anchor, self.prefix, *args)

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        if self._r is not None:
            return
        self._load_sources()
        self._r = self._client(blocking=False)
        self._block = self._client(blocking=True)
        try:
            async with self._answering():
                try:
                    await self.r.ping()
                except RedisClusterException as exc:  # no startup node answered
                    raise RedisConnectionError(str(exc)) from exc
                except ResponseError as exc:  # the connection's setup was refused: SELECT of a missing db, ACLs
                    refused = await asyncio.to_thread(database_refused, self._url, exc)
                    raise refused or ConfigurationError(f"{self._where}: {exc}") from None
                await self._load_scripts()
        except (BackendUnavailable, ConfigurationError):
            await self.close()
            raise

    async def setup_warnings(self) -> list[str]:
        try:
            with self._guard():
                r = self.r  # on a cluster, ask the primary of this installation's slot: every key lives there
                where = {"target_nodes": r.get_node_from_key(self._anchor)} if isinstance(r, RedisCluster) else {}
                aof = (await r.config_get("appendonly", **where)).get("appendonly")
                snapshots = (await r.config_get("save", **where)).get("save")
        except ResponseError:  # CONFIG refused (renamed or disabled, as managed services do): cannot tell
            return []
        if aof != "no":
            return []
        if not snapshots:
            return [f"{self._where} keeps nothing on disk (appendonly no, no save points): a Redis restart "
                    "loses every job; turn on AOF (appendonly yes)"]
        return [f"{self._where} writes only snapshots (appendonly no, save {snapshots}): a Redis restart loses "
                "the jobs written since the last one; turn on AOF (appendonly yes)"]

    async def close(self) -> None:
        self.close_blocking()
        for client in (self._r, self._block):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._r = self._block = None

    async def ping(self) -> None:
        async with self._answering():
            await self.r.ping()

    @contextlib.asynccontextmanager
    async def _answering(self) -> AsyncIterator[None]:
        """``_guard``, and ``BackendUnavailable`` once Redis was silent for ``ANSWER_WITHIN``."""
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                with self._guard():
                    yield
        except TimeoutError:  # this bound's (a client's own timeout is BackendUnavailable already)
            raise BackendUnavailable(f"{self._where} did not answer within {ANSWER_WITHIN:g} s") from None

    async def drop(self) -> None:
        """Delete every key under this backend's prefix (tests and ``reset`` tooling)."""
        with self._guard():
            batch: list[str] = []
            async for key in self.r.scan_iter(match=f"{{{self.prefix}}}:*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    await self.r.unlink(*batch)
                    batch = []
            if batch:
                await self.r.unlink(*batch)

    # -- submit -------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """Store ``jobs`` in one script call.

        Calls that arrive while another enqueue is in flight are coalesced into one script call
        (each caller's jobs stay atomic; a caller's unknown parent fails only that caller), so
        many concurrent single enqueues cost one round trip per batch, not per job.
        """
        if not jobs:
            return []
        now = time.time()
        return await self._coalescer.submit(Submission(jobs, payload(jobs, now), now))

    async def _enqueue_batch(self, subs: Sequence[Submission]) -> list[Enqueued | BaseException]:
        """The enqueue script for the submissions of concurrent async callers, in one call."""
        return await sent_together_async(subs, self._enqueue_script)

    async def _enqueue_script(self, count: int, payload: list[str], now: float) -> list[Any]:
        reply: list[Any] = await self._run("enqueue", float_arg(now), str(count), *payload)
        return reply

    def enqueue_blocking(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """``enqueue`` for synchronous callers, on a thread-safe blocking client.

        No event loop runs, so a sync caller's enqueue costs about one round trip (about a
        third of running the async client to completion on a loop per call). Threads that
        enqueue at once share round trips (``GroupCommit``), as async callers do in ``enqueue``.
        """
        if not jobs:
            return []
        now = time.time()
        return self._enqueue_group.submit(Submission(jobs, payload(jobs, now), now))

    def _enqueue_batch_blocking(self, subs: Sequence[Submission]) -> list[Enqueued | BaseException]:
        """The enqueue script for the submissions of concurrent sync callers, in one call."""
        return sent_together(subs, self._enqueue_script_blocking)

    def _enqueue_script_blocking(self, count: int, payload: list[str], now: float) -> list[Any]:
        client = self._sync_client()
        sha = self._sync_sha
        args = [self._anchor, self.prefix, float_arg(now), str(count), *payload]
        with self._guard():
            try:
                kept = self._kept_enqueue.send(client, [("EVALSHA", sha, 1, *args)])
                reply = kept[0] if kept is not None else client.evalsha(sha, 1, *args)
            except NoScriptError:  # a new or restarted server: load it, then run it
                client.script_load(self._src["enqueue"])
                reply = client.evalsha(sha, 1, *args)
            except ResponseError as exc:  # this client's first connection: its SELECT of a missing db
                refused = database_refused(self._url, exc)
                if refused is None:
                    raise
                raise refused from None
        return cast(list[Any], reply)

    def close_blocking(self) -> None:
        """Close the client of ``enqueue_blocking`` (if one was made)."""
        with self._sync_lock:
            client, self._sync = self._sync, None
            self._kept_enqueue.forget()
            self._kept_wait.forget()
        if client is not None:
            client.close()  # its pool disconnects every connection, those kept out of it too

    # -- leasing ------------------------------------------------------------------------
    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: float) -> list[Lease]:
        if limit <= 0 or not queues:
            return []
        args = claim_args(queues, limit, worker_id, now)
        await self._hand_back_lost(worker_id)
        with self._losing(worker_id, args):
            return self._leases(await self._run("claim", *args), queues)

    @contextlib.contextmanager
    def _losing(self, worker_id: str, claim_args: Sequence[str]) -> Iterator[None]:
        """A claim that raises may have leased jobs whose reply never came: remember its token base."""
        try:
            yield
        except BaseException:
            with self._lost_lock:
                lost = self._lost_claims.setdefault(worker_id, [])
                lost.append(claim_args[3])
                del lost[:-_LOST_CLAIMS_KEPT]
            raise

    async def _hand_back_lost(self, worker_id: str) -> None:
        """Hand back the jobs leased by claims of ``worker_id`` whose reply was lost (the
        connection dropped after the script ran), before its next claim or as it stops: they run again now,
        not once their leases expire, and that delivery is not counted. The worker never saw
        their tokens, so none of them runs anywhere; a job whose lease ended since is left alone
        (its token no longer holds). The records expire with the leases."""
        with self._lost_lock:
            bases = self._lost_claims.pop(worker_id, None)
        if not bases:
            return
        keys = [self._gk(f"lc:{base}") for base in bases]
        try:
            with self._guard():
                records = cast(list[str | None], await self.r.mget(keys))  # decoded replies
            leased = [record.split(" ") for record in records if record]  # id token id token ... (no spaces in either)
            outcomes = [Outcome(job_id, token, Status.QUEUED, uncount_delivery=True)
                        for pairs in leased for job_id, token in zip(pairs[::2], pairs[1::2], strict=True)]
            if outcomes:
                applied = await self.finish(outcomes, time.time())
                back = [o.job_id for o, ok in zip(outcomes, applied, strict=True) if ok]
                if back:
                    log.info("Redis: handed back %d job(s) leased by a claim whose reply was lost: %s",
                             len(back), ", ".join(back))
        except BaseException:
            with self._lost_lock:
                self._lost_claims.setdefault(worker_id, [])[:0] = bases
            raise

    def _leases(self, reply: list[str], queues: Sequence[str]) -> list[Lease]:
        records, retry_at, due = reply
        self._retry_at = float(retry_at) if retry_at else None
        self._due_seen = (time.monotonic(), tuple(queues), float(due) if due else None)
        leases = []
        for h in json.loads(records):
            job = job_from_hash(h)
            leases.append(Lease(job, job.lease_token or ""))
        return leases

    async def finish_and_claim(
        self, outcomes: Sequence[Outcome], queues: Sequence[str], limit: int, worker_id: str, now: float
    ) -> tuple[list[bool], list[Lease]]:
        """Both scripts in one pipeline: one round trip, applied in order (outcomes first)."""
        if not outcomes or limit <= 0 or not queues:
            return await super().finish_and_claim(outcomes, queues, limit, worker_id, now)
        to_finish = finish_args(outcomes, now)
        to_claim = claim_args(queues, limit, worker_id, now)
        await self._hand_back_lost(worker_id)
        with self._losing(worker_id, to_claim), self._guard():
            for attempt in (1, 2):
                pipe = self.r.pipeline(transaction=False)
                pipe.evalsha(self._sha["finish"], 1, self._anchor, self.prefix, *to_finish)
                pipe.evalsha(self._sha["claim"], 1, self._anchor, self.prefix, *to_claim)
                try:
                    finished, claimed = await pipe.execute()
                    break
                except NoScriptError:  # the server lost its scripts (restart, failover): neither ran
                    if attempt == 2:
                        raise
                    await self._load_scripts()
        return [c == "1" for c in finished], self._leases(claimed, queues)

    async def heartbeat(self, worker: WorkerInfo, leases: Mapping[str, str], now: float) -> HeartbeatReply:
        args: list[str] = [float_arg(now), worker.id, worker_entry(worker, now)]
        for job_id, token in leases.items():
            args += [job_id, token]
        lost, cancel = await self._run("heartbeat", *args)
        return HeartbeatReply(lost=frozenset(lost), cancel_requested=frozenset(cancel))

    async def finish(self, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        if not outcomes:
            return []
        reply: str = await self._run("finish", *finish_args(outcomes, now))
        return [c == "1" for c in reply]

    async def set_progress(self, job_id: str, token: str, progress: Mapping[str, Any], now: float) -> bool:
        return bool(int(await self._run("progress", float_arg(now), job_id, token, dumps(dict(progress)))))

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        if not queues or timeout <= 0:
            return
        timeout = await self._wake_timeout(queues, timeout)
        if timeout <= 0.0005:
            return
        with self._guard():
            # this backend's own key too, for ``end_wait``; a token left by a late one is cleared first
            pipe = self._blocking().pipeline(transaction=False)
            pipe.delete(self._end_key)
            pipe.blpop([*(self._qk(q, "wake") for q in queues), self._end_key], timeout=timeout)
            await pipe.execute()

    async def end_wait(self) -> bool:
        """Push a token onto the key that ``wait_for_work``'s BLPOP watches besides the queues':
        a cancelled BLPOP would cost its connection (its reply would be left unread)."""
        with self._guard():
            pipe = self.r.pipeline(transaction=False)
            pipe.rpush(self._end_key, "1")
            pipe.pexpire(self._end_key, 5000)  # a token nobody took does not outlive a wait
            await pipe.execute()
        return True

    async def wait_and_claim(
        self, queues: Sequence[str], timeout: float, limit: int, worker_id: str
    ) -> list[Lease] | None:
        """BLPOP and the claim script in one pipeline: Redis runs the claim the moment the wake-up
        arrives (or the wait times out), with no round trip back to the worker in between. The
        claim reads the server's clock (its ``now`` would be stale by the wait)."""
        if not queues or timeout <= 0 or limit <= 0:
            await self.wait_for_work(queues, timeout)
            return None
        timeout = await self._wake_timeout(queues, timeout)
        if timeout <= 0.0005:
            return None
        args = claim_args(queues, limit, worker_id, 0.0)
        args[0] = ""  # now: the server's TIME when the claim runs
        await self._hand_back_lost(worker_id)
        with self._losing(worker_id, args), self._guard():
            pipe = self._blocking().pipeline(transaction=False)
            pipe.blpop([self._qk(q, "wake") for q in queues], timeout=timeout)
            pipe.evalsha(self._sha["claim"], 1, self._anchor, self.prefix, *args)
            try:
                _, claimed = await pipe.execute()
            except NoScriptError:  # the claim did not run: reload, and let the caller claim
                await self._load_scripts()
                return None
        return self._leases(claimed, queues)

    def wait_and_claim_blocking(
        self, queues: Sequence[str], timeout: float, limit: int, worker_id: str
    ) -> list[Lease] | None:
        """``wait_and_claim`` on the blocking client (a worker's pool thread waits, then runs
        what it leased)."""
        if not queues or timeout <= 0 or limit <= 0:
            return None
        client = self._sync_client()
        with self._guard():
            heads = None
            if not self._due_known(queues):
                pipe = client.pipeline(transaction=False)
                self._read_heads(pipe, queues)
                heads = pipe.execute()
            timeout = self._timeout_until_due(timeout, heads)
            if timeout <= 0.0005:
                return None
            args = claim_args(queues, limit, worker_id, 0.0)
            args[0] = ""  # now: the server's TIME when the claim runs
            wake = [self._qk(q, "wake") for q in queues]
            claim = ("EVALSHA", self._sha["claim"], 1, self._anchor, self.prefix, *args)
            try:
                with self._losing(worker_id, args):  # handed back by the worker's next (async) claim
                    kept = self._kept_wait.send(client, [("BLPOP", *wake, timeout), claim])
                    if kept is None:
                        pipe = client.pipeline(transaction=False)
                        pipe.blpop(wake, timeout=timeout)
                        pipe.execute_command(*claim)
                        kept = pipe.execute()
                    _, claimed = kept
            except NoScriptError:  # the claim did not run: load it, and let the caller claim
                client.script_load(self._src["claim"])
                return None
        return self._leases(claimed, queues)

    async def _wake_timeout(self, queues: Sequence[str], timeout: float) -> float:
        """``timeout``, shortened to when the first scheduled job or a rate-limited one is due
        (jobs coming due on a schedule push no wake-up token); rounded for BLPOP."""
        heads = None
        if not self._due_known(queues):
            with self._guard():
                pipe = self.r.pipeline(transaction=False)
                self._read_heads(pipe, queues)
                heads = await pipe.execute()
        return self._timeout_until_due(timeout, heads)

    def _due_known(self, queues: Sequence[str]) -> bool:
        """Whether a claim of ``queues`` just now saw when their first scheduled job is due (a
        worker waits right after its claim; else the wait reads it)."""
        seen = self._due_seen
        return seen is not None and seen[1] == tuple(queues) and time.monotonic() - seen[0] < self.DUE_SEEN_FRESH

    def _read_heads(self, pipe: Any, queues: Sequence[str]) -> None:
        for q in queues:
            pipe.hget(self._qk(q, "cfg"), "paused")
            pipe.zrange(self._qk(q, "sched"), 0, 0, withscores=True)

    def _timeout_until_due(self, timeout: float, heads: list[Any] | None) -> float:
        """``timeout`` cut to the first due time of ``heads`` (``_read_heads``'s replies; None: the
        one the last claim saw) or of a rate-limited job."""
        now = time.time()
        if heads is None:
            due = self._due_seen[2] if self._due_seen is not None else None
            if due is not None:
                timeout = min(timeout, max(0.0, due - now))
        else:
            for paused, head in zip(heads[::2], heads[1::2], strict=True):
                if paused != "1" and head:
                    timeout = min(timeout, max(0.0, head[0][1] / 1000 - now))
        if self._retry_at is not None:  # a rate-limited job left queued may start then
            timeout = min(timeout, max(0.0, self._retry_at - now))
        return 0.0 if timeout <= 0.0005 else max(0.001, round(timeout, 3))

    def _blocking(self) -> aioredis.Redis | RedisCluster:
        if self._block is None:
            raise BackendUnavailable("the redis backend is not open")
        return self._block

    # -- reads --------------------------------------------------------------------------
    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        if not ids:
            return []
        reply = await self._run("get", "all", *ids)
        return [job_from_hash(h) for h in json.loads(reply)]

    async def list_jobs(self, query: JobQuery) -> Page:
        limit = max(1, min(int(query.limit), 1000))
        cursor = cursors.decode_job_id(query.cursor) if query.cursor else ""
        status = str(query.status) if query.status is not None else ""
        if status and query.queue:
            kind = "queue_status"
        elif status:
            kind = "status"
        elif query.queue:
            kind = "queue"
        elif query.task:
            kind = "task"
        else:
            kind = "all"
        reply = await self._run("list", kind, status, query.task or "", query.queue or "", cursor,
                                str(limit), str(_LIST_BUDGET))
        cursor_out, *records = json.loads(reply)
        return Page([job_from_hash(h) for h in records], cursors.encode_job_id(cursor_out) if cursor_out else None)

    async def revisions(self, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        flat = await self._run("get", "rev", *ids)
        return {k: int(v) for k, v in pairs_to_dict(flat).items()}

    # -- admin --------------------------------------------------------------------------
    async def cancel(self, job_id: str, now: float) -> Job | None:
        text = await self._run("cancel", float_arg(now), job_id)
        return job_from_hash(json.loads(text)) if text else None

    async def requeue(self, queue: str | None, ids: Sequence[str] | None, statuses: Sequence[Status],
                      now: float) -> list[Job]:
        wanted = ",".join(str(s) for s in statuses)
        if not wanted:
            return []
        out: list[Job] = []
        if ids is not None:
            if not ids:
                return []
            # one call: a job whose parent ended badly refuses them all (the script writes nothing)
            reply = await self._run("requeue", float_arg(now), queue or "", wanted, str(_BATCH), *ids)
            if isinstance(reply, list):
                _, job_id, parent, ended = reply
                raise InvalidTransition(blocked(job_id, parent, ended or None))
            return [job_from_hash(h) for h in json.loads(reply)]
        while True:
            records = json.loads(await self._run("requeue", float_arg(now), queue or "", wanted, str(_BATCH)))
            out += [job_from_hash(h) for h in records]
            if len(records) < _BATCH:
                return out

    async def purge(self, queue: str, now: float) -> int:
        total = 0
        while True:
            n = int(await self._run("purge", float_arg(now), queue, str(_BATCH)))
            total += n
            if n < _BATCH:
                return total

    async def queue_settings(self, name: str) -> QueueSettings:
        with self._guard():
            h: dict[str, str] = await self.r.hgetall(self._qk(name, "cfg"))  # type: ignore[assignment]
        return settings_from_hash(h)

    async def save_queue_settings(self, name: str, settings: QueueSettings,
                                  fields: Collection[str] | None = None) -> None:
        s = settings.validated()
        values = {"retention": float_arg(s.retention), "visibility_timeout": float_arg(s.visibility_timeout),
                  "max_deliveries": str(int(s.max_deliveries)), "result_ttl": float_arg(s.result_ttl),
                  "paused": "1" if s.paused else "0"}
        # a field not written falls back to its default in the scripts' cfg(), as settings() reads it
        with self._guard():
            pipe = self.r.pipeline(transaction=not self.cluster)
            pipe.hset(self._qk(name, "cfg"), mapping={k: v for k, v in values.items() if fields is None or k in fields})
            pipe.sadd(self._gk("queues"), name)
            if not s.paused:  # a resumed queue may have work waiting
                pipe.lpush(self._qk(name, "wake"), "1")
                pipe.ltrim(self._qk(name, "wake"), 0, 63)
            await pipe.execute()

    async def queues(self, names: Sequence[str] | None = None) -> list[QueueInfo]:
        statuses = [str(s) for s in Status]
        with self._guard():
            if names is None:
                known: set[str] = await self.r.smembers(self._gk("queues"))  # type: ignore[assignment]
                names = sorted(known)
            pipe = self.r.pipeline(transaction=False)
            for q in names:
                pipe.hgetall(self._qk(q, "cfg"))
                for s in statuses:
                    pipe.zcard(self._qk(q, f"s:{s}"))
            replies = await pipe.execute()
        out = []
        step = 1 + len(statuses)
        for i, q in enumerate(names):
            chunk = replies[i * step:(i + 1) * step]
            counts = {s: int(n) for s, n in zip(statuses, chunk[1:], strict=True) if n}
            out.append(QueueInfo(q, settings_from_hash(chunk[0]), counts))
        return out

    # -- webhooks -----------------------------------------------------------------------
    async def due_webhooks(self, now: float, limit: int, lease: float) -> list[tuple[Job, int]]:
        if limit <= 0:
            return []
        reply = await self._run("webhooks", "due", float_arg(now), str(limit), float_arg(lease))
        return [(job_from_hash(h), int(n)) for n, h in json.loads(reply)]

    async def webhook_attempted(self, job_id: str, delivered: bool, next_at: float | None) -> None:
        await self._run("webhooks", "done", job_id, "1" if delivered else "0",
                        float_arg(next_at) if next_at is not None else "")

    # -- housekeeping and registry -------------------------------------------------------
    async def sweep(self, now: float, limit: int = 500) -> SweepReport:
        r = await self._run("sweep", float_arg(now), str(max(1, limit)), float_arg(self.WORKER_TTL))
        return SweepReport(requeued=int(r[0]), dead=int(r[1]), expired=int(r[2]), deleted=int(r[3]),
                           workers_dropped=int(r[4]))

    async def unregister_worker(self, worker_id: str) -> None:
        await self._hand_back_lost(worker_id)
        with self._guard():
            pipe = self.r.pipeline(transaction=not self.cluster)
            pipe.hdel(self._gk("workers"), worker_id)
            pipe.zrem(self._gk("wseen"), worker_id)
            await pipe.execute()

    async def workers(self, now: float) -> list[WorkerInfo]:
        with self._guard():
            ids: list[str] = await self.r.zrangebyscore(  # type: ignore[assignment]
                self._gk("wseen"), f"({now - self.WORKER_TTL!r}", "+inf")
            if not ids:
                return []
            raw = await self.r.hmget(self._gk("workers"), ids)
        return [worker_from_entry(text) for text in raw if text]


__all__ = ["RedisBackend", "job_from_hash"]
