"""RabbitMQ-only behaviour: tickets, the outbox top-up, other stores, outages, configuration."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import aio_pika.exceptions
import pytest

from conveyor.backends import create_backend
from conveyor.backends.amqp import AMQPBackend
from conveyor.backends.base import Backend, Lease, Outcome
from conveyor.core.errors import BackendUnavailable, ConfigurationError
from conveyor.core.ids import uuid7
from conveyor.core.job import Job, Status

RABBIT = "amqp://guest:guest@127.0.0.1:5672/"
STORES = {
    "sqlite": lambda tmp, ns: f"sqlite:///{tmp / 'store.db'}",
    "redis": lambda tmp, ns: f"redis://127.0.0.1:6379/0?prefix={ns}",
    "postgresql": lambda tmp, ns: f"postgresql://postgres@127.0.0.1:5432/test?schema={ns}",
}

Opener = Callable[[], Awaitable[AMQPBackend]]


def job(**fields: object) -> Job:
    return Job(id=uuid7(), task="t", created_at=time.time(), **fields)  # type: ignore[arg-type]


@pytest.fixture(params=list(STORES))
async def open_amqp(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """AMQP backends over one store of each kind, on a namespace of this test's own."""
    ns = f"amqptest_{uuid.uuid4().hex[:10]}"
    store_url = STORES[request.param](tmp_path, ns)
    opened: list[AMQPBackend] = []

    async def open_one() -> AMQPBackend:
        b = AMQPBackend(f"{RABBIT}?prefix={ns}", create_backend(store_url))
        await b.open()
        opened.append(b)
        return b

    yield open_one
    if opened:
        await opened[0].drop()
    for b in reversed(opened):
        await b.close()


async def ready_tickets(b: AMQPBackend, queue: str = "default") -> int:
    """Tickets not acked yet: waiting in RabbitMQ or held by ``b``'s consumer."""
    await b._settle()  # tickets are published in the background
    await asyncio.sleep(0.1)  # let acks and deliveries land
    return await b.ticket_count(queue) + len(b._held)


async def subscribed(b: AMQPBackend, queue: str = "default") -> None:
    """Have ``b`` consume ``queue`` (claims and waits set that up in the background)."""
    setup = b._start_consuming([queue], 1)
    if setup is not None:
        await asyncio.wait_for(setup, 5.0)


async def held(b: AMQPBackend, queue: str = "default") -> None:
    """Wait until ``b`` holds a ticket of ``queue`` (the store's own wake-up may end a wait first)."""
    async with asyncio.timeout(5.0):
        while not b._held:
            await b.wait_for_work([queue], 1.0)


async def test_smoke__any_store__enqueue_wakes_another_process_claim_finish(open_amqp: Opener) -> None:
    a, b = await open_amqp(), await open_amqp()
    waiter = asyncio.create_task(b.wait_for_work(["default"], 5.0))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    [(stored, created)] = await a.enqueue([job()])
    await asyncio.wait_for(waiter, 2.0)
    assert created and time.monotonic() - started < 0.5

    [lease] = await b.claim(["default"], 4, "w1", time.time())
    assert lease.job.id == stored.id
    assert await b.finish([Outcome(stored.id, lease.token, Status.SUCCEEDED, result=1)], time.time()) == [True]
    assert await ready_tickets(a) == 0


async def test_tickets__one_per_ready_job__acked_as_jobs_are_leased(open_amqp: Opener) -> None:
    b = await open_amqp()
    await b.enqueue([job() for _ in range(3)] + [job(scheduled_at=time.time() + 60)])
    # the scheduled job waits in the store's index, not in RabbitMQ: its queue gets a wake ticket
    assert await ready_tickets(b) == 3 + 1

    leases = await b.claim(["default"], 8, "w1", time.time())
    await asyncio.sleep(0.1)  # tickets delivered after the claim began are acked by the next one
    assert await b.claim(["default"], 8, "w1", time.time()) == []

    assert len(leases) == 3
    assert await ready_tickets(b) == 0


async def test_wait__delayed_job_enqueued_elsewhere_during_the_wait__starts_when_due(
        open_amqp: Opener, idle_until_leased: Callable[[Backend], Awaitable[tuple[Lease, int]]]) -> None:
    """Any store: the wake ticket of a delayed job ends the wait, and the next wait reads its due time."""
    a, b = await open_amqp(), await open_amqp()

    async def enqueue_soon() -> Job:
        await asyncio.sleep(0.1)  # ``a`` waits by now
        [(stored, _)] = await b.enqueue([job(scheduled_at=time.time() + 0.3)])
        return stored

    enqueuing = asyncio.create_task(enqueue_soon())
    lease, claims = await idle_until_leased(a)
    stored = await enqueuing

    assert lease.job.id == stored.id and stored.scheduled_at is not None
    assert stored.scheduled_at <= lease.job.started_at < stored.scheduled_at + 0.15
    assert claims <= 4


async def test_claim__stale_ticket__is_acked_and_dropped(open_amqp: Opener) -> None:
    b = await open_amqp()
    [(stored, _)] = await b.enqueue([job()])
    await b.cancel(stored.id, time.time())
    await held(b)  # the ticket arrives

    assert await b.claim(["default"], 1, "w1", time.time()) == []
    assert await ready_tickets(b) == 0
    assert not b._held


async def test_hand_back__gets_a_fresh_ticket(open_amqp: Opener) -> None:
    b = await open_amqp()
    await b.enqueue([job()])
    await held(b)
    [lease] = await b.claim(["default"], 1, "w1", time.time())
    assert await ready_tickets(b) == 0

    await b.finish([Outcome(lease.job.id, lease.token, Status.QUEUED, uncount_delivery=True)], time.time())

    assert await ready_tickets(b) == 1


async def test_outbox__job_stored_without_ticket__sweep_tops_up_and_wakes_a_waiter(open_amqp: Opener) -> None:
    b, other = await open_amqp(), await open_amqp()
    await b.store.enqueue([job()])  # as if the process died between the store and the publish
    assert await ready_tickets(b) == 0
    waiter = asyncio.create_task(other.wait_for_work(["default"], 5.0))
    await asyncio.sleep(0.1)

    await b.sweep(time.time())

    await asyncio.wait_for(waiter, 2.0)
    assert len(await other.claim(["default"], 4, "w2", time.time())) == 1


HOLDER = """
import asyncio, sys
from conveyor.backends import create_backend
from conveyor.backends.amqp import AMQPBackend

async def main():
    b = AMQPBackend(sys.argv[1], create_backend(sys.argv[2]))
    await b.open()
    assert b._reaper is not None
    b._reaper.cancel()  # hold the ticket as a busy worker would
    while not b._held:
        await b.wait_for_work(["default"], 1.0)
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_consumer_killed__held_ticket__is_redelivered_to_another(open_amqp: Opener) -> None:
    survivor = await open_amqp()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, survivor.url, _store_url(survivor), stdout=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(1.0)  # the holder subscribes first, so RabbitMQ hands it the ticket
        await survivor.enqueue([job()])
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 10.0) == b"held\n"
        await subscribed(survivor)
        assert not survivor._held

        holder.kill()  # kill -9

        await held(survivor)  # redelivered (``held`` fails after 5 s)
        assert len(await survivor.claim(["default"], 1, "w2", time.time())) == 1
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


def _store_url(b: AMQPBackend) -> str:
    return str(b.store.url)  # type: ignore[attr-defined]


async def test_queue__is_a_quorum_queue_with_the_delivery_limit(open_amqp: Opener) -> None:
    b = await open_amqp()
    await b.enqueue([job()])  # it answers once the store has the job; the ticket (and queue) follow
    conn = await aio_pika.connect(RABBIT)
    try:
        deadline = time.monotonic() + 5
        while True:  # a passive declaration fails, closing its channel, until the queue exists
            try:
                await (await conn.channel()).declare_queue(b.rabbit_queue("default"), passive=True)
                break
            except aio_pika.exceptions.ChannelNotFoundEntity:
                assert time.monotonic() < deadline, "the enqueue's ticket never declared the queue"
                await asyncio.sleep(0.02)
        ch = await conn.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await ch.declare_queue(b.rabbit_queue("default"), durable=True,
                                   arguments={"x-queue-type": "quorum", "x-delivery-limit": 99})
    finally:
        await conn.close()


async def test_unreachable_rabbitmq__is_backend_unavailable_in_one_line(tmp_path: Path) -> None:
    b = AMQPBackend("amqp://guest:guest@127.0.0.1:1/", create_backend(f"sqlite:///{tmp_path / 's.db'}"))
    with pytest.raises(BackendUnavailable) as err:
        await b.open()
    assert "RabbitMQ at 127.0.0.1:1 is unreachable" in str(err.value)
    assert "\n" not in str(err.value)


def test_amqp_url__without_store_url__is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_STORE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="CONVEYOR_STORE_URL"):
        create_backend(RABBIT)


def test_amqp_url__store_url__builds_the_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_STORE_URL", f"sqlite:///{tmp_path / 's.db'}")
    b = create_backend(f"{RABBIT}?prefix=app1&heartbeat=30")
    assert isinstance(b, AMQPBackend) and isinstance(b.store, Backend)
    assert b.prefix == "app1" and b.rabbit_queue("media") == "app1.media"
    assert "prefix" not in b.amqp_url and "heartbeat=30" in b.amqp_url


async def test_wait__ended_by_tickets_or_timeouts__keeps_the_redis_stores_connections() -> None:
    """A wait that a ticket ends ends the store's BLPOP too (``end_wait``), and an idle wait
    lets the BLPOP reach its own timeout: a cancelled BLPOP costs its connection (before, an
    idle worker reconnected about 4 times a second, and once per job started)."""
    import redis

    ns = f"amqptest_{uuid.uuid4().hex[:10]}"
    store_url = f"redis://127.0.0.1:6379/0?prefix={ns}"
    a = AMQPBackend(f"{RABBIT}?prefix={ns}", create_backend(store_url))
    b = AMQPBackend(f"{RABBIT}?prefix={ns}", create_backend(store_url))
    await a.open()
    await b.open()
    direct = redis.Redis()

    def connections() -> int:
        return int(direct.info("stats")["total_connections_received"])

    try:
        before = 0
        for i in range(6):
            waiter = asyncio.create_task(b.wait_for_work(["default"], 5.0))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            [(stored, _)] = await a.enqueue([job()])
            await asyncio.wait_for(waiter, 2.0)
            assert time.monotonic() - started < 0.5
            assert [lease.job.id for lease in await b.claim(["default"], 1, "w", time.time())] == [stored.id]
            if i == 0:
                before = connections()  # the first wait opened the store's blocking connection
        for _ in range(6):
            started = time.monotonic()
            await b.wait_for_work(["default"], 0.1)  # nothing comes (a spare wake-up token may end one early)
            assert time.monotonic() - started < 0.5
        assert connections() - before <= 2  # the old code made 5 or more here
    finally:
        await a.drop()
        await b.close()
        await a.close()
        direct.close()


async def test_new_queues__published_to_and_consumed_at_once__the_connection_stays_up(open_amqp: Opener) -> None:
    """A publish and a consumer set-up each declared a new quorum queue, at once: RabbitMQ 3.10
    answered the second declaration before the queue ran, and the consume on it crashed the
    channel and the connection (541 INTERNAL_ERROR); the ticket was lost with it."""
    b = await open_amqp()
    queues = [f"q{n}" for n in range(12)]
    for queue in queues:
        await asyncio.gather(b.enqueue([job(queue=queue)]), b._consume([queue], 1))
    async with asyncio.timeout(5.0):
        while len(b._held) < len(queues):  # each queue's ticket reaches its consumer
            await asyncio.sleep(0.02)

    assert not b._lost and b._connected()


async def test_close__right_after_an_enqueue__its_ticket_is_published_first(open_amqp: Opener) -> None:
    """Tickets are published in the background: a process that closes at once (``conveyor
    enqueue``) still leaves one per job for the workers, not a wait for the outbox sweep."""
    a, b = await open_amqp(), await open_amqp()
    await b.enqueue([job() for _ in range(3)])
    await b.close()

    assert await ready_tickets(a) == 3


async def test_queue_deleted_from_outside__the_worker_consumes_it_again_and_its_tickets_wake_it(
        open_amqp: Opener, caplog: pytest.LogCaptureFixture) -> None:
    """RabbitMQ cancels the consumers of a queue deleted from outside (Basic.Cancel): the waiting
    worker is woken, declares the queue again with its arguments and consumes it, so the next
    ticket wakes it. Before, it still counted the cancelled consumer as its own: tickets no longer
    reached it until a reconnect (jobs ran only by the store's poll)."""
    worker, enqueuer = await open_amqp(), await open_amqp()
    await subscribed(worker)
    name = worker.rabbit_queue("default")
    waiter = asyncio.create_task(worker.wait_for_work(["default"], 5.0))
    await asyncio.sleep(0.1)
    outside = await aio_pika.connect(RABBIT)
    try:
        deleted = time.monotonic()
        await (await outside.channel()).queue_delete(name)
        await asyncio.wait_for(waiter, 2.0)  # not the 5 s timeout
        assert time.monotonic() - deleted < 0.5

        await subscribed(worker)  # what its next claim or wait does
        settings = await worker.queue_settings("default")
        arguments: dict[str, object] = {"x-queue-type": "quorum", "x-delivery-limit": settings.max_deliveries}
        if worker._server_version() >= (3, 12):
            arguments["x-consumer-timeout"] = 13 * 3600 * 1000
        declared = await (await outside.channel()).declare_queue(name, durable=True, arguments=arguments)
        assert declared.declaration_result.consumer_count == 1
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):  # a classic queue is refused
            await (await outside.channel()).declare_queue(name, durable=True)
    finally:
        await outside.close()

    enqueued = time.monotonic()
    await enqueuer.enqueue([job()])
    await held(worker)
    assert time.monotonic() - enqueued < 0.2  # the ticket, not a poll of the store
    assert len(await worker.claim(["default"], 1, "w1", time.time())) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"RabbitMQ cancelled the consumer of queue {name} (deleted?); declaring it and consuming "
                        "it again"]


async def test_reconnects__claims_while_the_channels_reopen__the_worker_keeps_one_consumer_and_acks_its_tickets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aio-pika marks the connection up, reopens its channels one after another and only then runs
    the reconnect callbacks: a busy worker's claim in between consumes on the reopened channel.
    Before, ``_on_reconnect`` then forgot that live consumer and the tickets it had delivered: the
    next claim consumed again (two consumers of one queue from one worker) and those tickets stayed
    unacked, taking up the prefetch, until the next reconnect."""
    from tests.e2e.tcp_proxy import TcpProxy

    ns = f"amqptest_{uuid.uuid4().hex[:10]}"
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    proxy = TcpProxy("127.0.0.1", 5672).start()
    worker = AMQPBackend(f"amqp://guest:guest@127.0.0.1:{proxy.port}/?prefix={ns}&reconnect_interval=0.2",
                         create_backend(store_url))
    enqueuer = AMQPBackend(f"{RABBIT}?prefix={ns}", create_backend(store_url))
    await worker.open()
    await enqueuer.open()
    outside = await aio_pika.connect(RABBIT)
    name = worker.rabbit_queue("default")

    reopened = asyncio.Event()
    restore = aio_pika.RobustChannel.restore

    async def slow_restore(channel: aio_pika.RobustChannel, *args: object) -> None:
        await restore(channel, *args)
        if channel is worker._sub and worker._connected():
            reopened.set()
            await asyncio.sleep(1.0)  # fault injection: the channels restored after it, slowed

    async def queue_state() -> tuple[int, int]:
        declared = await (await outside.channel()).declare_queue(name, passive=True)
        return int(declared.declaration_result.consumer_count), int(declared.declaration_result.message_count)

    worker_closed = False
    try:
        await subscribed(worker)
        assert worker._conn is not None
        monkeypatch.setattr(aio_pika.RobustChannel, "restore", slow_restore)
        consumers = []
        for round_ in range(3):
            reopened.clear()
            proxy.cut()
            await enqueuer.enqueue([job()])  # its ticket waits in RabbitMQ for the worker's next consumer
            await enqueuer._settle()
            await asyncio.sleep(0.3)
            proxy.restore()
            await asyncio.wait_for(reopened.wait(), 10.0)
            await subscribed(worker)  # a claim's set-up, between the reopening and the reconnect callbacks
            async with asyncio.timeout(5.0):
                while not worker._held:  # the ticket reaches that consumer
                    await asyncio.sleep(0.01)
            assert worker._conn.connection_attempt == round_ + 1  # before the reconnect callbacks
            async with asyncio.timeout(5.0):  # the reconnect callbacks (``_on_reconnect``) have run
                while worker._conn.connection_attempt < round_ + 2:
                    await asyncio.sleep(0.01)

            [lease] = await worker.claim(["default"], 1, "w1", time.time())
            await subscribed(worker)
            assert await worker.finish([Outcome(lease.job.id, lease.token, Status.SUCCEEDED)], time.time()) == [True]
            await asyncio.sleep(0.1)  # the ack lands
            consumers.append((await queue_state())[0])
        assert consumers == [1, 1, 1]

        await worker.close()  # the tickets it left unacked go back to the queue
        worker_closed = True
        await asyncio.sleep(0.3)
        assert await queue_state() == (0, 0)
    finally:
        monkeypatch.undo()
        await outside.close()
        await enqueuer.drop()
        if not worker_closed:
            await worker.close()
        await enqueuer.close()
        proxy.stop()
