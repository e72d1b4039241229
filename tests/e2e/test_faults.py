"""Fault injection: real workers reach Redis / PostgreSQL through a proxy that the test cuts.

For each engine: two ``conveyor worker`` processes connect through ``TcpProxy``; 200 short
jobs are enqueued; the proxy is cut for 5 s mid-run (every connection reset, new ones
refused) and restored. Every job must end ``succeeded``, no job may run twice (leases are
10 s, longer than the outage), the workers must stay up and heartbeat again, and an enqueue
attempted through the proxy during the outage must fail fast with ``BackendUnavailable``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis

from conveyor import Conveyor
from conveyor.backends.base import Backend, Outcome
from conveyor.backends.postgres import PostgresBackend
from conveyor.backends.redis import RedisBackend
from conveyor.core.errors import BackendUnavailable
from conveyor.core.ids import uuid7
from conveyor.core.job import Job, Status
from conveyor.worker.stopping import SHUTDOWN_BOUND
from conveyor.worker.worker import EXIT_STALLED, Worker
from tests.api.conftest import free_port
from tests.e2e import jobs_app
from tests.e2e.conftest import Env, wait_for
from tests.e2e.jobs_app import recorded
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

PORTS = {"redis": 6379, "postgresql": 5432}
OUTAGE = 5.0
VISIBILITY = 10
FAIL_FAST = 3.0  #: an enqueue during the outage must fail within this many seconds


def engine_url(kind: str, host: str, port: int, namespace: str) -> str:
    if kind == "redis":
        return f"redis://{host}:{port}/0?prefix={namespace}"
    return f"postgresql://postgres@{host}:{port}/test?schema={namespace}"


def make_client(url: str) -> Conveyor:
    client = Conveyor(url)
    client.tasks = dict(jobs_app.app.tasks)
    client.queue_declarations = dict(jobs_app.app.queue_declarations)
    return client


def drop(client: Conveyor) -> None:
    async def go() -> None:
        backend = await client.backend()
        try:
            await backend.drop()  # type: ignore[attr-defined]
        finally:
            await backend.close()

    client.portal.call(go(), timeout=30)


def close(client: Conveyor) -> None:
    async def go() -> None:
        await (await client.backend()).close()

    with contextlib.suppress(BackendUnavailable):
        client.portal.call(go(), timeout=10)
    client.portal.stop()


class ProxiedEnv(Env):
    """Workers reach the engine through ``proxy``; ``client`` talks to it directly."""

    def __init__(self, tmp_path: Path, kind: str) -> None:
        super().__init__(tmp_path)
        self.kind = kind
        namespace = f"cvfault_{uuid.uuid4().hex[:12]}"
        self.proxy = TcpProxy("127.0.0.1", PORTS[kind]).start()
        self.direct_url = engine_url(kind, "127.0.0.1", PORTS[kind], namespace)
        self.url = engine_url(kind, "127.0.0.1", self.proxy.port, namespace)  # what workers use
        self.client = make_client(self.direct_url)

    def workers_seen(self) -> list:
        async def go():
            return await (await self.client.backend()).workers(time.time())

        return self.client.portal.call(go(), timeout=10)


@pytest.fixture(params=["redis", "postgresql"])
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxiedEnv]:
    env = ProxiedEnv(tmp_path, request.param)
    try:
        yield env
    finally:
        env.stop()
        env.proxy.stop()
        drop(env.client)
        env.client.portal.stop()


def fetch(client: Conveyor, handles) -> list:
    """The stored jobs of ``handles``, in one round trip."""
    async def go():
        return await (await client.backend()).get_jobs([h.id for h in handles])

    return client.portal.call(go(), timeout=10)


def wait_terminal(client: Conveyor, handles, timeout: float) -> list:
    """Wait (bounded) until every job is terminal; the stored jobs."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = fetch(client, handles)
        pending = [j for j in jobs if not j.status.terminal]
        if not pending and len(jobs) == len(handles):
            return jobs
        assert time.monotonic() < deadline, f"{len(pending)} jobs not finished after {timeout} s: {pending[:3]}"
        time.sleep(0.02)


def timed_enqueue(client: Conveyor) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        client.enqueue("noop")
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_silent_engine__sigterm_stops_an_idle_worker_within_its_bounds(faulty: ProxiedEnv):
    """The engine stops answering without closing anything (a hung server, a path that drops
    packets): a stop must not wait for an answer that never comes. Exit 0 within the shutdown's
    bounds; nothing was running, so nothing is owed."""
    env = faulty
    worker = env.worker("--grace", "1", "--no-scheduler")
    wait_for(lambda: env.workers_seen(), what="the worker to register")
    time.sleep(0.5)
    env.proxy.freeze()
    time.sleep(1.0)  # its calls now hang: the wait for work in flight, heartbeats unanswered
    asked = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    # each shutdown step waits SHUTDOWN_BOUND at most (the claim under way, the last outcomes, the
    # close); psycopg's own 10 s answer to a cancel (ask the server, wait for it) is cut short
    assert worker.wait(3 * SHUTDOWN_BOUND + 25) == 0
    assert time.monotonic() - asked < 3 * SHUTDOWN_BOUND + 6
    env.proxy.thaw()


def test_engine_outage__workers_reconnect_and_every_job_succeeds(faulty: ProxiedEnv):
    env = faulty
    # Leases of 10 s outlive the 5 s outage (no job may run twice) and bound the cost of a claim
    # whose reply the cut swallowed: that lease is held by nobody until it expires.
    workers = [env.worker("--concurrency", "2", env=env.env(TEST_VISIBILITY=str(VISIBILITY))) for _ in range(2)]
    # A client app that reaches the engine through the proxy too, connected before the cut.
    app_client = make_client(env.url)
    try:
        app_client.enqueue("noop")
        jobs = env.client.enqueue_many([("work", (10,), {}, {}) for _ in range(200)])
        wait_for(lambda: sum(e["event"] == "end" for e in recorded(env.log)) >= 30, timeout=20,
                 what="30 jobs done before the cut")
        # both workers up (a loaded machine may still be starting one): the cut hits running workers
        wait_for(lambda: len(env.workers_seen()) == 2, timeout=20, what="both workers registered")

        env.proxy.cut()
        cut_at = time.monotonic()
        done_at_cut = sum(j.status is Status.SUCCEEDED for j in fetch(env.client, jobs))
        # An app that tries to enqueue during the outage gets a clear error, fast, every time.
        attempts = [timed_enqueue(app_client) for _ in range(2)]
        never_connected = make_client(env.url)
        try:
            attempts.append(timed_enqueue(never_connected))
        finally:
            never_connected.close()  # its loop (left to the GC: "unclosed event loop"); it opened nothing
        for exc, took in attempts:
            assert isinstance(exc, BackendUnavailable), f"expected BackendUnavailable, got {exc!r}"
            assert took < FAIL_FAST, f"enqueue during the outage took {took:.2f} s to fail: {exc}"
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - cut_at)))
        assert [w.poll() for w in workers] == [None, None], f"a worker exited during the outage:\n{env.logs()}"
        done_in_outage = sum(j.status is Status.SUCCEEDED for j in fetch(env.client, jobs)) - done_at_cut

        env.proxy.restore()
        restored_at = time.monotonic()
        stored = wait_terminal(env.client, jobs, 30)
        recovery = time.monotonic() - restored_at
        assert all(j.status is Status.SUCCEEDED for j in stored), collections.Counter(j.status for j in stored)

        # The same processes are still up, and both heartbeat again after the outage.
        assert [w.poll() for w in workers] == [None, None], f"a worker exited:\n{env.logs()}"
        after = time.time() - (time.monotonic() - restored_at)
        wait_for(lambda: len([w for w in env.workers_seen() if w.last_heartbeat > after]) == 2, timeout=10,
                 what="both workers to heartbeat after the outage")
        assert {w.pid for w in env.workers_seen()} == {w.pid for w in workers}
        assert env.proxy.accepted > 4  # they reconnected through the proxy

        starts = collections.Counter(e["job"] for e in recorded(env.log) if e["event"] == "start")
        ids = {j.id for j in jobs}
        assert ids <= set(starts)
        twice = [job_id for job_id in ids if starts[job_id] > 1]
        assert not twice, f"{len(twice)} jobs ran twice although their {VISIBILITY} s leases outlived the outage"
        # A claim committed by the engine whose reply was lost in the cut: delivered, never started.
        orphaned = sum(1 for j in stored if j.deliveries > starts[j.id])
        assert "Traceback" not in env.logs(), env.logs()
        for step in ("housekeeping", "webhook delivery"):  # said once per worker, not every second
            assert env.logs().count(f"{step} failed") <= len(workers), env.logs()
        print(f"\n[{env.kind}] outage {OUTAGE:.0f} s: {done_at_cut} done before the cut, "
              f"{done_in_outage} finished during it; all 200 done {recovery:.2f} s after restore "
              f"({orphaned} orphaned claims waited out their lease); "
              f"enqueue failed in {', '.join(f'{t:.2f}' for _, t in attempts)} s")
    finally:
        close(app_client)


def test_engine_outage__http_submit_is_a_fast_503_and_nothing_accepted_is_lost(faulty: ProxiedEnv):
    """A real ``conveyor server`` reaches the engine through the proxy; the proxy is cut for 5 s."""
    env = faulty
    port = free_port()
    log = open(env.tmp_path / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "server", "--app", "tests.e2e.jobs_app:app",
                               "--port", str(port)], env=env.env(), stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child has its own copy
    env.procs.append(server)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as http:
        wait_for(lambda: _status(http, "GET", "/readyz") == 200, timeout=20, what="the server to be ready")
        accepted = [http.post("/v1/jobs", json={"task": "noop"}) for _ in range(5)]
        assert [r.status_code for r in accepted] == [202] * 5

        env.proxy.cut()
        cut_at = time.monotonic()
        took_503 = []
        for _ in range(3):
            started = time.monotonic()
            r = http.post("/v1/jobs", json={"task": "noop"})
            took = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json" and r.headers["retry-after"]
            assert r.json()["status"] == 503 and r.json()["detail"]
            assert took < FAIL_FAST, f"a submit during the outage took {took:.2f} s to fail"
            took_503.append(took)
        assert _status(http, "GET", "/readyz") == 503
        assert http.get("/healthz").status_code == 200  # the process itself is fine
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - cut_at)))  # 5 s in all, the checks above included

        env.proxy.restore()
        restored = time.monotonic()
        wait_for(lambda: _status(http, "POST", "/v1/jobs", {"task": "noop"}) == 202, timeout=20,
                 what="a submit to be accepted again after the restore")
        print(f"\n[{env.kind}] HTTP submits: 503 in {', '.join(f'{t:.2f}' for t in took_503)} s during the outage, "
              f"accepted again "
              f"{time.monotonic() - restored:.2f} s after the restore")
        ids = [r.json()["id"] for r in accepted]
        stored = fetch(env.client, [SimpleNamespace(id=i) for i in ids])
        assert sorted(j.id for j in stored) == sorted(ids)  # every job accepted before the cut exists
        assert all(j.status is Status.QUEUED for j in stored)  # (no worker runs in this test)
    assert server.poll() is None, (env.tmp_path / "server.log").read_text()
    assert "Traceback" not in (env.tmp_path / "server.log").read_text()


def _status(http: httpx.Client, method: str, path: str, body: object = None) -> int:
    try:
        return http.request(method, path, json=body).status_code
    except httpx.TransportError:
        return 0


def job() -> Job:
    return Job(id=uuid7(), task="t", created_at=time.time())


def test_enqueue_blocking__connection_reset_between_calls__next_enqueue_reconnects() -> None:
    """A one-at-a-time caller keeps a connection: a reset of it costs a reconnect, no job."""
    prefix = f"rtest_{uuid.uuid4().hex[:10]}"
    direct = redis.Redis(decode_responses=True)
    with TcpProxy("127.0.0.1", 6379) as proxy:
        b = RedisBackend(f"redis://{proxy.address}/0?prefix={prefix}")
        try:
            [(first, _)] = b.enqueue_blocking([job()])
            proxy.cut()
            with pytest.raises(BackendUnavailable, match="unreachable"):
                b.enqueue_blocking([job()])
            proxy.restore()
            [(second, _)] = b.enqueue_blocking([job()])
            proxy.cut()  # a reset this caller never saw: its kept connection is dead
            proxy.restore()
            [(third, created)] = b.enqueue_blocking([job()])

            assert created and third.status == "queued"
            assert direct.hmget(f"{{{prefix}}}:jq", [first.id, second.id, third.id]) == ["default"] * 3
        finally:
            b.close_blocking()
            for key in direct.scan_iter(match=f"{{{prefix}}}:*"):
                direct.delete(key)


def test_enqueue_blocking__silent_engine__fails_once_at_its_socket_timeout() -> None:
    """No reset, no answer: the call fails after one socket timeout (10 s), not after three
    retries and a second try through the pool (it took 50 s); a thawed engine works again."""
    prefix = f"rtest_{uuid.uuid4().hex[:10]}"
    direct = redis.Redis(decode_responses=True)
    with TcpProxy("127.0.0.1", 6379) as proxy:
        b = RedisBackend(f"redis://{proxy.address}/0?prefix={prefix}")
        try:
            b.enqueue_blocking([job()])
            proxy.freeze()
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="unreachable"):
                b.enqueue_blocking([job()])
            assert time.monotonic() - started < 13
            proxy.thaw()
            [(stored, created)] = b.enqueue_blocking([job()])
            assert created and direct.hget(f"{{{prefix}}}:jq", stored.id) == "default"
        finally:
            proxy.thaw()
            b.close_blocking()
            for key in direct.scan_iter(match=f"{{{prefix}}}:*"):
                direct.delete(key)


async def test_wait_and_claim_blocking__connection_reset_between_waits__next_wait_leases() -> None:
    """An idle worker's pool thread keeps a connection for its waits: a reset of it costs a
    reconnect, and the next wait still leases the job that arrives."""
    prefix = f"rtest_{uuid.uuid4().hex[:10]}"
    with TcpProxy("127.0.0.1", 6379) as proxy:
        b = RedisBackend(f"redis://{proxy.address}/0?prefix={prefix}")
        await b.open()
        try:
            assert await asyncio.to_thread(b.wait_and_claim_blocking, ["default"], 0.05, 4, "w") == []
            proxy.cut()  # a reset the waiting thread never saw: its kept connection is dead
            proxy.restore()
            [(stored, _)] = await b.enqueue([job()])

            leases = await asyncio.to_thread(b.wait_and_claim_blocking, ["default"], 1.0, 4, "w")

            assert leases is not None and [lease.job.id for lease in leases] == [stored.id]
        finally:
            await b.drop()
            await b.close()
            b.close_blocking()


def test_enqueue_blocking__threads_at_once_through_a_cut__each_call_ends_and_none_is_lost() -> None:
    """Eight threads enqueue through a proxy that is cut for a second: every call returns a
    stored job or raises ``BackendUnavailable`` within the fail-fast bound, no thread is left
    waiting behind another's send, and every job a call returned exists afterwards."""
    prefix = f"rtest_{uuid.uuid4().hex[:10]}"
    direct = redis.Redis(decode_responses=True)
    stored: list[str] = []
    failures: list[float] = []  # seconds each failed call took
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def caller(b: RedisBackend) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                [(j, _)] = b.enqueue_blocking([job()])
                stored.append(j.id)
            except BackendUnavailable:
                failures.append(time.monotonic() - t0)
                time.sleep(0.05)
            except BaseException as exc:
                unexpected.append(exc)
                return

    with TcpProxy("127.0.0.1", 6379) as proxy:
        b = RedisBackend(f"redis://{proxy.address}/0?prefix={prefix}")
        threads = [threading.Thread(target=caller, args=(b,)) for _ in range(8)]
        try:
            for t in threads:
                t.start()
            time.sleep(0.3)
            before = len(stored)
            proxy.cut()
            time.sleep(1.0)
            proxy.restore()
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(FAIL_FAST + 10)
                assert not t.is_alive(), "a caller hangs"

            assert unexpected == []
            assert before > 0 and len(stored) > before  # before the cut, and again after it
            assert failures and max(failures) < FAIL_FAST
            assert len(set(stored)) == len(stored)
            found = direct.hmget(f"{{{prefix}}}:jq", stored)
            assert found.count(None) == 0, f"{found.count(None)} of {len(stored)} accepted jobs are missing"
        finally:
            stop.set()
            b.close_blocking()
            for key in direct.scan_iter(match=f"{{{prefix}}}:*"):
                direct.delete(key)


def test_silent_redis__a_stalled_worker_exits_70_within_its_bounds(caplog: pytest.LogCaptureFixture) -> None:
    """The claim loop waits on a Redis that went silent (no reset, no answer: keepalives cannot
    tell): the watchdog sees the stall and the worker exits 70 instead of living on (it logged
    the exit and stayed, before the shutdown was bounded). It sees it on time: the check ran
    after each heartbeat, which waits up to 10 s on a silent engine."""
    namespace = f"cvfault_{uuid.uuid4().hex[:12]}"
    direct = make_client(engine_url("redis", "127.0.0.1", 6379, namespace))
    with TcpProxy("127.0.0.1", 6379) as proxy:
        proxied = make_client(engine_url("redis", "127.0.0.1", proxy.port, namespace))
        worker = Worker(proxied, scheduler=False, stall_timeout=2.0, heartbeat=0.2, concurrency=1)
        job = direct.enqueue("sleeper", (1.0,), {})
        result: dict[str, object] = {}

        def run() -> None:
            result["code"] = asyncio.run(worker.run())

        thread = threading.Thread(target=run, daemon=True)
        try:
            thread.start()
            wait_for(lambda: job.refresh().status is Status.RUNNING, what="the job to start")
            with caplog.at_level(logging.ERROR, logger="conveyor.worker.worker"):
                proxy.freeze()  # its outcome and the next claim go out, and nothing comes back
                frozen, frozen_at = time.monotonic(), time.time()
                thread.join(2.0 + 4 * SHUTDOWN_BOUND + 15)
            assert not thread.is_alive(), "the stalled worker did not exit"
            assert result["code"] == EXIT_STALLED
            assert time.monotonic() - frozen < 2.0 + 4 * SHUTDOWN_BOUND + 10
            [said] = [r for r in caplog.records if "claim loop stalled" in r.getMessage()]
            assert said.created - frozen_at < 2.0 + 1.5, "the stall was noticed late"
        finally:
            proxy.thaw()
            thread.join(30)
            drop(direct)
            direct.portal.stop()


class RepliesHeld(TcpProxy):
    """``holding``: requests still reach the engine (and commit), its replies are held; a
    ``cut()`` then drops the connection after the commit and before the reply."""

    holding = False

    def reset(self) -> None:
        """Drop the connections after the commit and before the reply, and keep accepting: the
        client reconnects at once and sends the call again (redis-py's retry)."""
        self._call(self._reset_now())

    async def _reset_now(self) -> None:
        self.holding = False  # on the proxy's loop: no held reply slips out before the abort
        for client, upstream in list(self._conns):
            for w in (client, upstream):
                if w is not None:
                    w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if writer.get_extra_info("peername")[1] == self.target[1]:  # towards the engine
            return await super()._pump(reader, writer)
        try:
            while data := await reader.read(65536):
                while self.holding and not writer.is_closing():
                    await asyncio.sleep(0.01)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass


@contextlib.asynccontextmanager
async def _replies_held(kind: str) -> AsyncIterator[tuple[RepliesHeld, Backend, Backend]]:
    """A backend reached through ``RepliesHeld``, and one reaching the engine directly, on one
    fresh namespace (dropped after)."""
    namespace = f"cvfault_{uuid.uuid4().hex[:12]}"
    engine = RedisBackend if kind == "redis" else PostgresBackend
    direct = engine(engine_url(kind, "127.0.0.1", PORTS[kind], namespace))
    with RepliesHeld("127.0.0.1", PORTS[kind]) as proxy:
        held = engine(engine_url(kind, "127.0.0.1", proxy.port, namespace))
        await direct.open()
        await held.open()
        try:
            yield proxy, direct, held
        finally:
            await held.close()
            await direct.drop()
            await direct.close()


async def _lost_reply(proxy: RepliesHeld, direct: Backend, call: Awaitable[Any], committed: str) -> None:
    """Run ``call`` with its reply held until the engine applied it (``committed`` is the job it
    finishes or leases), then cut the connection: the call fails, though it was applied."""
    proxy.holding = True
    task = asyncio.ensure_future(call)
    try:
        for _ in range(500):
            [stored] = await direct.get_jobs([committed])
            if stored.status in (Status.SUCCEEDED, Status.RUNNING):
                break
            await asyncio.sleep(0.01)
        proxy.cut()
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(task, 10)
    finally:
        proxy.holding = False
        proxy.restore()


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
async def test_reply_lost_after_commit__finish_is_not_refused_and_the_claim_is_handed_back(kind: str) -> None:
    """The connection drops after the engine applied a finish, and then a claim, but before
    their replies. The finish sent again was reported refused ("the lease had passed to another
    worker") though it was applied; the job leased by the lost claim waited out its lease (30 s)."""
    async with _replies_held(kind) as (proxy, direct, b):
        [(first, _)] = await direct.enqueue([job()])
        [lease] = await b.claim(["default"], 1, "w", time.time())
        outcome = Outcome(first.id, lease.token, Status.SUCCEEDED, result=1)
        await _lost_reply(proxy, direct, b.finish([outcome], time.time()), first.id)
        assert await b.finish([outcome], time.time()) == [True]  # sent again: applied already

        [(second, _)] = await direct.enqueue([job()])
        await _lost_reply(proxy, direct, b.claim(["default"], 1, "w", time.time()), second.id)
        started = time.monotonic()
        leases = await b.claim(["default"], 1, "w", time.time())
        assert [x.job.id for x in leases] == [second.id], "the lost claim's job waits for its lease to expire"
        assert time.monotonic() - started < 5
        assert leases[0].job.deliveries == 1  # the lost delivery is not counted
        assert await b.finish([Outcome(second.id, leases[0].token, Status.SUCCEEDED)], time.time()) == [True]
        [done] = await direct.get_jobs([second.id])
        assert [a["status"] for a in done.attempts] == ["handed_back", "succeeded"]


async def test_reply_lost_after_commit__claim_sent_again_by_the_client__returns_its_jobs() -> None:
    """The connection drops after a claim ran but before its reply, and redis-py reconnects at
    once and sends the claim again: that second run found nothing left to lease, no call failed,
    and the first run's job waited out its lease (30 s) with no worker running it."""
    async with _replies_held("redis") as (proxy, direct, b):
        [(lost, _)] = await direct.enqueue([job()])
        proxy.holding = True
        claim = asyncio.ensure_future(b.claim(["default"], 1, "w", time.time()))
        for _ in range(500):
            [stored] = await direct.get_jobs([lost.id])
            if stored.status is Status.RUNNING:
                break
            await asyncio.sleep(0.01)
        proxy.reset()

        leases = await asyncio.wait_for(claim, 10)
        assert [x.job.id for x in leases] == [lost.id], "the job leased by the claim's first run waits for its lease"
        assert leases[0].job.deliveries == 1
        assert await b.finish([Outcome(lost.id, leases[0].token, Status.SUCCEEDED)], time.time()) == [True]


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
async def test_reply_lost_after_commit__clean_stop_hands_the_claim_back(kind: str) -> None:
    """A worker that stops cleanly after a claim whose reply was lost hands its job back as it
    leaves: the job does not wait out its lease (30 s) for another worker."""
    async with _replies_held(kind) as (proxy, direct, b):
        [(lost, _)] = await direct.enqueue([job()])
        await _lost_reply(proxy, direct, b.claim(["default"], 1, "w", time.time()), lost.id)

        await b.unregister_worker("w")

        leases = await direct.claim(["default"], 1, "other", time.time())
        assert [x.job.id for x in leases] == [lost.id], "the lost claim's job waits for its lease to expire"
        assert leases[0].job.deliveries == 1  # the lost delivery is not counted
