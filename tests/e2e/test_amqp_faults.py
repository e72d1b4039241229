"""Fault injection on RabbitMQ: real workers reach it through a proxy that the test cuts.

Two ``conveyor worker`` processes use ``amqp://…`` through ``TcpProxy`` with the job records in
a store they reach directly (a fresh SQLite file, or a fresh PostgreSQL schema). 200 short jobs
are enqueued; the proxy is cut for 5 s mid-run (every connection reset, new ones refused) and
restored. What the RabbitMQ engine promises (``backends/amqp/backend.py``):

- during the outage the store keeps working: claims lease from it and idle workers poll it,
  so jobs keep finishing; an enqueue on a client that was connected stores the job and defers
  its ticket (it returns, fast), and that job runs; a client that never reached RabbitMQ
  cannot open the engine and fails fast with ``BackendUnavailable``, storing nothing;
- no worker exits, every job ends ``succeeded``, none runs more than twice;
- after the restore ``connect_robust`` reconnects and the consumers come back: RabbitMQ shows
  both workers consuming again, and an idle worker is woken by a ticket for a new job.

A cut while an async task blocks the worker's loop (``time.sleep``) meets calls already on their
way as the loop runs again: the worker carries on, and says each outage in one warning and its
end in one line, with no ERROR nor traceback from Conveyor or the AMQP client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from conveyor import Conveyor
from conveyor.backends import create_backend
from conveyor.backends.amqp import AMQPBackend
from conveyor.backends.amqp.outbox import Ticket
from conveyor.backends.amqp.url import HEARTBEAT
from conveyor.core.errors import BackendUnavailable, ConfigurationError
from conveyor.core.ids import uuid7
from conveyor.core.job import Job, Status
from tests.e2e import jobs_app
from tests.e2e.conftest import Env, wait_for
from tests.e2e.jobs_app import recorded
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

RABBIT = ("127.0.0.1", 5672)
OUTAGE = 5.0
VISIBILITY = 10  #: leases outlive the outage: no job needs to run twice
FAST = 3.0  #: an enqueue during the outage returns (or fails) within this many seconds
RECONNECT = 15.0  #: consumers must be back this long after the restore
PICKUP = 1.0  #: an idle worker starts a new job this soon after its enqueue, once reconnected
PROBES = 5
ENQUEUES_IN_OUTAGE = 4  #: one a second through the outage
OUTAGE_PICKUP = 1.5  #: a job enqueued during the outage starts this soon, from the store


def amqp_url(port: int, prefix: str) -> str:
    return f"amqp://guest:guest@{RABBIT[0]}:{port}/?prefix={prefix}"


def make_client(url: str) -> Conveyor:
    client = Conveyor(url)
    client.tasks = dict(jobs_app.app.tasks)
    client.queue_declarations = dict(jobs_app.app.queue_declarations)
    return client


def call(client: Conveyor, method: str, *args: Any) -> Any:
    """``await (await client.backend()).<method>(*args)`` on the client's portal (bounded)."""
    async def go() -> Any:
        return await getattr(await client.backend(), method)(*args)

    return client.portal.call(go(), timeout=30)


def pings(client: Conveyor) -> bool:
    try:
        call(client, "ping")
    except BackendUnavailable:
        return False
    return True


def close(client: Conveyor) -> None:
    async def go() -> None:
        await (await client.backend()).close()

    with contextlib.suppress(Exception):
        client.portal.call(go(), timeout=10)
    client.portal.stop()


def rabbit_queue(name: str) -> tuple[int, int]:
    """``(consumers, ready tickets)`` of RabbitMQ queue ``name``, asked directly (not via the proxy)."""
    async def go() -> tuple[int, int]:
        conn = await aio_pika.connect(amqp_url(RABBIT[1], "x"), timeout=5)
        try:
            async with conn.channel() as ch:
                q = await ch.declare_queue(name, passive=True)
                result = q.declaration_result
                return int(result.consumer_count or 0), int(result.message_count or 0)
        finally:
            await conn.close()

    return asyncio.run(asyncio.wait_for(go(), 10))


def consumer_count(name: str) -> int:
    """Consumers of RabbitMQ queue ``name``; 0 while it does not exist."""
    try:
        return rabbit_queue(name)[0]
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return 0


def alarming(logs: str) -> list[str]:
    """Log records that would page someone: an ERROR or a traceback. A handled outage has none (the
    AMQP client's own reconnect chatter is quiet below DEBUG; Conveyor says what happens)."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )", logs)
    return [r for r in records if "Traceback" in r or re.match(r"\S+ \S+ (ERROR|CRITICAL) ", r)]


class RabbitFaultEnv(Env):
    """Workers reach RabbitMQ through ``proxy``; ``client`` reaches it directly. One store for all."""

    def __init__(self, tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(tmp_path)
        self.client.close()
        self.prefix = f"cvamqpfault_{uuid.uuid4().hex[:10]}"
        if store == "sqlite":
            self.store_url = f"sqlite:///{tmp_path}/store.db"
        else:
            self.store_url = f"postgresql://postgres@127.0.0.1:5432/test?schema={self.prefix}"
        monkeypatch.setenv("CONVEYOR_STORE_URL", self.store_url)  # read by create_backend, here and in workers
        self.store = store
        self.proxy = TcpProxy(*RABBIT).start()
        self.direct_url = amqp_url(RABBIT[1], self.prefix)
        self.url = amqp_url(self.proxy.port, self.prefix)  # what workers use
        self.client = make_client(self.direct_url)
        self.rabbit_name = f"{self.prefix}.default"

    def starts(self) -> collections.Counter[str]:
        return collections.Counter(str(e["job"]) for e in recorded(self.log) if e["event"] == "start")

    def first_starts(self) -> dict[str, float]:
        """When each job first started (epoch seconds)."""
        first: dict[str, float] = {}
        for e in recorded(self.log):
            if e["event"] == "start":
                first.setdefault(str(e["job"]), float(str(e["t"])))
        return first

    def started_at(self, job_id: str, timeout: float) -> float:
        """Wait (bounded) until ``job_id`` starts; when it first started."""
        deadline = time.monotonic() + timeout
        while (at := self.first_starts().get(job_id)) is None:
            assert time.monotonic() < deadline, f"job {job_id} did not start within {timeout} s"
            time.sleep(0.01)
        return at

    def ended(self) -> int:
        return sum(e["event"] == "end" for e in recorded(self.log))

    def jobs_stored(self) -> int:
        return sum(sum(q.counts.values()) for q in call(self.client, "queues"))


@pytest.fixture(params=["sqlite", "postgresql"])
def rabbit_faults(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[RabbitFaultEnv]:
    env = RabbitFaultEnv(tmp_path, request.param, monkeypatch)
    try:
        yield env
    finally:
        env.stop()
        env.proxy.stop()
        with contextlib.suppress(Exception):
            call(env.client, "drop")  # the RabbitMQ queues of the prefix, and the store's namespace
        close(env.client)


def fetch(client: Conveyor, ids: Sequence[str]) -> list[Job]:
    return list(call(client, "get_jobs", list(ids)))


def wait_terminal(client: Conveyor, ids: Sequence[str], timeout: float) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = fetch(client, ids)
        pending = [j for j in jobs if not j.status.terminal]
        if not pending and len(jobs) == len(ids):
            return jobs
        assert time.monotonic() < deadline, f"{len(pending)} jobs not finished after {timeout} s: {pending[:3]}"
        time.sleep(0.02)


def timed_enqueue(client: Conveyor) -> tuple[str | BaseException, float]:
    """``(job id or the exception, seconds taken)`` of one ``work(10)`` enqueue."""
    started = time.monotonic()
    try:
        handle = client.enqueue("work", (10,))
    except Exception as exc:
        return exc, time.monotonic() - started
    return handle.id, time.monotonic() - started


def test_rabbitmq_outage__store_carries_on_and_tickets_flow_again(
    rabbit_faults: RabbitFaultEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = rabbit_faults
    # Reconnect attempts every second, not aio-pika's 5 s: the consumers' return is what is tested,
    # not that schedule (test_many_hosts runs on the default); more attempts fail during the outage.
    url = env.url + "&reconnect_interval=1"
    worker_env = env.env(CONVEYOR_URL=url, TEST_VISIBILITY=str(VISIBILITY))
    workers = [env.worker("--concurrency", "2", env=worker_env)]
    # One at a time: a worker that consumes a quorum queue another one declared a moment ago can
    # meet RabbitMQ's race (basic.consume before the queue's Raft member runs: the channel crashes,
    # the connection closes with 541), which this test is not about; test_amqp.py starts many at once.
    wait_for(lambda: consumer_count(env.rabbit_name) == consumer_count(f"{env.prefix}.crashy") == 1,
             timeout=20, what="the first worker consuming")
    workers.append(env.worker("--concurrency", "2", env=worker_env))
    app_client = make_client(url)  # an app that reaches RabbitMQ through the proxy, connected before the cut
    try:
        warm = app_client.enqueue("work", (10,))
        wait_for(lambda: warm.refresh().status is Status.SUCCEEDED, timeout=20, what="workers up, first job done")
        wait_for(lambda: rabbit_queue(env.rabbit_name)[0] == 2, timeout=10, what="both workers consuming")
        jobs = env.client.enqueue_many([("work", (10,), {}, {}) for _ in range(200)])
        ids = [warm.id] + [j.id for j in jobs]
        wait_for(lambda: env.ended() >= 30, timeout=20, what="30 jobs done before the cut")

        env.proxy.cut()
        cut_at = time.monotonic()
        done_at_cut = sum(j.status is Status.SUCCEEDED for j in fetch(env.client, ids))
        stored_at_cut = env.jobs_stored()
        # A connected app's enqueue stores the job and defers its ticket: it returns, fast. One a
        # second, so that workers must claim from the store (polling) through the whole outage.
        accepted: list[tuple[str, float, float]] = []  # (job id, enqueued at (epoch), seconds taken)
        for i in range(ENQUEUES_IN_OUTAGE):
            result, took = timed_enqueue(app_client)
            assert not isinstance(result, BaseException), f"enqueue in the outage raised {result!r} after {took:.2f} s"
            assert took < FAST, f"enqueue during the outage took {took:.2f} s"
            accepted.append((result, time.time() - took, took))
            time.sleep(max(0.0, cut_at + i + 1 - time.monotonic()))
        # Readiness tells: ping fails, fast.
        pinged = time.monotonic()
        with pytest.raises(BackendUnavailable):
            call(app_client, "ping")
        assert time.monotonic() - pinged < FAST
        # An app that never reached RabbitMQ cannot open the engine: BackendUnavailable, fast.
        fresh = make_client(url)
        try:
            refused, took_refused = timed_enqueue(fresh)
        finally:
            close(fresh)
        assert isinstance(refused, BackendUnavailable), f"expected BackendUnavailable, got {refused!r}"
        assert took_refused < FAST, f"a new client took {took_refused:.2f} s to fail"
        assert env.jobs_stored() == stored_at_cut + len(accepted)  # the refused one stored nothing
        ids += [job_id for job_id, _, _ in accepted]

        time.sleep(max(0.0, OUTAGE - (time.monotonic() - cut_at)))
        assert [w.poll() for w in workers] == [None, None], f"a worker exited during the outage:\n{env.logs()}"
        done_in_outage = sum(j.status is Status.SUCCEEDED for j in fetch(env.client, ids)) - done_at_cut
        # Claims go to the store while RabbitMQ is away: work goes on, at the polling pace.
        assert done_in_outage > 0, f"no job finished during the {OUTAGE:.0f} s outage:\n{env.logs()}"
        first_start = env.first_starts()
        waits = [first_start[job_id] - at if job_id in first_start else None for job_id, at, _ in accepted]
        assert all(w is not None and w < OUTAGE_PICKUP for w in waits), (
            f"jobs enqueued during the outage waited {waits} s (polling the store should start them):\n{env.logs()}")

        env.proxy.restore()
        restored_at = time.monotonic()
        stored = wait_terminal(env.client, ids, 30)
        all_done = time.monotonic() - restored_at
        assert all(j.status is Status.SUCCEEDED for j in stored), collections.Counter(j.status for j in stored)

        # connect_robust reconnects and both workers consume tickets again.
        wait_for(lambda: rabbit_queue(env.rabbit_name)[0] == 2, timeout=RECONNECT,
                 what=f"both workers consuming {env.rabbit_name} again after the restore")
        reconnected = time.monotonic() - restored_at
        wait_for(lambda: pings(app_client), timeout=RECONNECT, what="the app's ping to pass again")
        assert env.proxy.accepted > 4  # they reconnected through the proxy

        # An idle worker is woken by a new job's ticket (polling alone would be up to 0.25 s).
        latencies = []
        for _ in range(PROBES):
            time.sleep(0.3)  # both workers idle, waiting for a ticket
            before = time.time()
            probe = env.client.enqueue("work", (1,)).id
            latencies.append(env.started_at(probe, timeout=5) - before)
            ids.append(probe)
        assert max(latencies) < PICKUP, f"pickup after the restore took {latencies}"
        wait_terminal(env.client, ids, 10)
        consumers, backlog = rabbit_queue(env.rabbit_name)
        assert consumers == 2

        assert [w.poll() for w in workers] == [None, None], f"a worker exited:\n{env.logs()}"
        assert {w.pid for w in call(env.client, "workers", time.time())} == {w.pid for w in workers}
        starts = env.starts()
        assert set(ids) <= set(starts)
        assert max(starts[i] for i in ids) <= 2, f"a job ran more than twice: {starts.most_common(3)}"
        twice = sum(starts[i] > 1 for i in ids)
        assert not alarming(env.logs()), env.logs()
        assert env.logs().count("conveyor.amqp: reconnected to") >= 2, env.logs()
        # this process's sync clients: their connection reconnects on a loop that runs (it logged
        # "no running event loop" errors when it had one only during a call)
        assert "no running event loop" not in caplog.text, caplog.text
        print(f"\n[amqp, {env.store} store] outage {OUTAGE:.0f} s: {done_at_cut} done before the cut, "
              f"{done_in_outage} finished during it; all {len(ids) - PROBES} done {all_done:.2f} s after restore; "
              f"consumers back after {reconnected:.2f} s; enqueue during the outage returned in "
              f"{', '.join(f'{t:.3f}' for _, _, t in accepted)} s (ticket deferred) and started after "
              f"{', '.join(f'{w:.2f}' for w in waits if w is not None)} s, a new client failed in "
              f"{took_refused:.3f} s; pickup after restore median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms; {twice} ran twice; {backlog} tickets left")
    finally:
        close(app_client)


BLOCKED_CUTS = 3
BLOCK = 4.0  #: seconds a ``blocks_the_loop`` job holds the worker's event loop


@pytest.mark.parametrize("rabbit_faults", ["sqlite"], indirect=True)
def test_rabbitmq_cut_while_a_task_blocks_the_loop__worker_carries_on_and_says_it_once(
    rabbit_faults: RabbitFaultEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The cut comes while an async task blocks the worker's loop with ``time.sleep``: as the loop
    runs again, calls already on their way to RabbitMQ meet the reset (aiormq fails some with a
    bare ``Exception``, which the worker once logged as a bug, and a claim could not survive). The
    worker carries on, logs one warning per outage and one line when it is back, no ERROR and no
    traceback; an app connected through the proxy logs none of the AMQP client's ERRORs either."""
    env = rabbit_faults
    url = env.url + "&reconnect_interval=1"
    worker = env.worker("--concurrency", "4", env=env.env(CONVEYOR_URL=url, TEST_VISIBILITY="30"))
    app_client = make_client(url)  # in this process: its records reach caplog
    try:
        warm = app_client.enqueue("work", (10,))
        wait_for(lambda: warm.refresh().status is Status.SUCCEEDED, timeout=20, what="worker up, first job done")
        ids = [warm.id]
        # a ready job no worker serves: each sweep of the outbox asks RabbitMQ for its tickets (a
        # call on its way as the loop runs again after a block)
        env.client.enqueue("work", (10,), queue="parked")
        for i in range(BLOCKED_CUTS):
            block = app_client.enqueue("blocks_the_loop", (BLOCK,))
            busy = env.client.enqueue_many([("work", (50,), {}, {}) for _ in range(20)])  # finish, and wait, meanwhile
            ids += [j.id for j in busy]
            env.started_at(block.id, timeout=10)
            time.sleep(0.5 + i)  # the cut comes at a different moment of each block
            env.proxy.cut()
            during, _ = timed_enqueue(app_client)  # stored; its ticket deferred
            assert not isinstance(during, BaseException), f"enqueue in the outage raised {during!r}"
            ids += [block.id, during]
            time.sleep(OUTAGE)
            env.proxy.restore()
            back = i + 1  # reconnections the worker has logged once it is back (or it exited)
            wait_for(lambda n=back: worker.poll() is not None or env.logs().count("conveyor.amqp: reconnected to") >= n,
                     timeout=RECONNECT, what=f"the worker reconnected after cut {back}:\n{env.logs()}")
            assert worker.poll() is None, f"the worker exited after cut {i + 1}:\n{env.logs()}"
        stored = wait_terminal(env.client, ids, 30)
        assert all(j.status is Status.SUCCEEDED for j in stored), collections.Counter(j.status for j in stored)
        assert worker.poll() is None, f"the worker exited:\n{env.logs()}"
        logs = env.logs()
        assert not alarming(logs), logs
        assert logs.count("RabbitMQ connection lost") == BLOCKED_CUTS, logs
        assert logs.count("conveyor.amqp: reconnected to") == BLOCKED_CUTS, logs
        client_alarms = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not client_alarms, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in client_alarms]
    finally:
        close(app_client)


@pytest.mark.parametrize(("query", "heartbeat"), [("", HEARTBEAT), ("&heartbeat=30", 30), ("&heartbeat=0", 0)])
def test_heartbeat__conveyors_unless_the_url_sets_one(query: str, heartbeat: int, tmp_path: Path) -> None:
    """The heartbeat timeout agreed with RabbitMQ: Conveyor's (RabbitMQ's own 60 s let a host cut off
    silently keep its dead connection, see test_many_hosts), or the URL's."""
    async def agreed() -> int:
        b = AMQPBackend(amqp_url(RABBIT[1], "h") + query, create_backend(f"sqlite:///{tmp_path}/store.db"))
        await b.open()
        try:
            assert b._conn is not None and b._conn.transport is not None
            return int(b._conn.transport.connection.connection_tune.heartbeat)
        finally:
            await b.close()

    assert asyncio.run(asyncio.wait_for(agreed(), 15)) == heartbeat


def test_heartbeat__not_whole_seconds__is_a_configuration_error(tmp_path: Path) -> None:
    """aiormq would read it as 0 and turn heartbeats off: a dead connection would go unnoticed."""
    with pytest.raises(ConfigurationError, match="invalid amqp heartbeat '10s'"):
        AMQPBackend(amqp_url(RABBIT[1], "h") + "&heartbeat=10s", create_backend(f"sqlite:///{tmp_path}/store.db"))


async def test_rabbitmq_frozen_while_the_prefetch_changes__consuming_resumes_after_the_thaw(tmp_path: Path) -> None:
    """A RabbitMQ that held its answers 6 s (the connection up) timed out the claim's set_qos:
    aiormq closed the consumer channel for the cancelled call, and the worker believed its
    consumers alive for good. No ticket reached it again; it polled the store."""
    prefix = f"freeze_{uuid.uuid4().hex[:10]}"
    store = f"sqlite:///{tmp_path / 'store.db'}"
    proxy = TcpProxy(*RABBIT).start()
    direct = AMQPBackend(amqp_url(5672, prefix), create_backend(store))
    b = AMQPBackend(amqp_url(proxy.port, prefix), create_backend(store))
    try:
        await direct.open()
        await b.open()
        await asyncio.wait_for(b._consume(["default"], 1), 5.0)
        proxy.freeze()
        assert await b.claim(["default"], 3, "w1", time.time()) == []  # the store answers; set_qos(3) waits
        with pytest.raises(BackendUnavailable, match=r"did not confirm 1 ticket\(s\) within 5 s"):
            await b.publish([Ticket("default", "wake")])  # and the publisher's bound is said as such
        await asyncio.sleep(0.5)
        proxy.thaw()

        await direct.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])

        async with asyncio.timeout(5.0):  # its ticket reaches ``b``
            while not b._held:
                await b.wait_for_work(["default"], 0.5)
        assert len(await b.claim(["default"], 3, "w1", time.time())) == 1
    finally:
        await b.close()
        proxy.stop()
        await direct.drop()
        await direct.close()


async def test_close__while_rabbitmq_holds_its_confirms__ends_within_the_apps_bound(tmp_path: Path) -> None:
    """``close`` lets the background publisher finish, but within the app's bound on a whole close
    (``_CLOSE_BOUND``): it waited up to 6 s for a round left without confirms, and the app cut it
    at 5 s with the connection and the store still open."""
    from conveyor.core.app import _CLOSE_BOUND

    prefix = f"settle_{uuid.uuid4().hex[:10]}"
    store = f"sqlite:///{tmp_path / 'store.db'}"
    proxy = TcpProxy(*RABBIT).start()
    direct = AMQPBackend(amqp_url(5672, prefix), create_backend(store))
    b = AMQPBackend(amqp_url(proxy.port, prefix), create_backend(store))
    closing: asyncio.Task[None] | None = None
    try:
        await direct.open()
        await b.open()
        await b.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])
        await b._settle()  # the queue is declared: what follows waits for confirms only
        proxy.freeze()
        await b.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])  # a round that gets no confirm
        await asyncio.sleep(1.0)
        await b.enqueue([Job(id=uuid7(), task="t", created_at=time.time())])  # the next round's
        closing = asyncio.create_task(b.close())
        async with asyncio.timeout(_CLOSE_BOUND):
            while b._publisher is not None:  # close waits for the publisher, then goes on
                await asyncio.sleep(0.05)
            proxy.cut()  # the connection's own close is quick (a frozen one has a bound of its own)
            await closing
        assert b._conn is None
    finally:
        proxy.stop()
        if closing is not None and not closing.done():
            closing.cancel()
            await asyncio.wait([closing])
        await direct.drop()
        await direct.close()
