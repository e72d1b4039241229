"""The RabbitMQ engine: RabbitMQ carries the wake-ups, the job store keeps the jobs.

URL: ``amqp://user:password@host:5672/vhost?prefix=conveyor`` (``amqps://`` for TLS), with the
job records in ``CONVEYOR_STORE_URL`` (sqlite, redis or postgresql). ``prefix`` (default
``conveyor``) names the RabbitMQ queues: Conveyor queue ``Q`` is the durable quorum queue
``<prefix>.Q``, declared with ``x-delivery-limit`` = the queue's ``max_deliveries`` (at first
declaration) and, on RabbitMQ ≥ 3.12, ``x-consumer-timeout`` longer than the longest lease.
``heartbeat`` (seconds, default ``HEARTBEAT`` = 5, ``0`` turns heartbeats off) is the AMQP
heartbeat timeout asked for; the other options are aiormq's.

Who decides what:

- The store is the source of truth for jobs, statuses, leases and fencing tokens, the
  scheduled index (delays, retries, waiting jobs), dependencies, queue settings, workers and
  webhooks. Every such method is the store's.
- RabbitMQ carries one persistent *ticket* per job that becomes ready (see ``outbox.py``),
  published with publisher confirms. Workers consume tickets with manual acks and a prefetch
  equal to their free slots; a ticket wakes ``wait_for_work`` at once, on any host.
- ``wait_for_work`` runs the store's own wait alongside: the store knows when a delayed or
  retrying job comes due (and has wake-ups of its own), so the wait ends then, not at its
  timeout. A job enqueued with a delay gets a ``wake`` ticket: the worker it wakes finds
  nothing yet, and its next wait learns the new due time from the store.
- ``claim`` leases from the store (so priority 9→0 then FIFO, global limits and paused queues
  hold exactly as on the store's own engine), then acks as many held tickets as it leased
  jobs, or every held ticket when the store had nothing more for it (a ticket whose job was
  taken, cancelled or finished elsewhere is acked and dropped). A ticket is acked within one
  claim of arriving, never held while a job runs: a lease's life is the store's business, and
  the consumer timeout never has to outlast a lease.
- Priority: quorum queues have no priorities before RabbitMQ 4 (and two levels from 4.0), so
  tickets carry none. Tickets are interchangeable wake-ups; the order is the store's.
- Delivery limit: the store counts deliveries and fails a job at ``max_deliveries``
  (``DeliveryLimitExceeded``) when its lease expires once too often. RabbitMQ's
  ``x-delivery-limit`` bounds only the redelivery of tickets held by consumers that died
  before acking them; a ticket dropped that way loses no job (the job stays ready in the
  store and the sweep tops up tickets).
- A worker killed with -9 loses its held tickets to RabbitMQ's redelivery (at once, to
  another consumer) and its leases to the store's sweep (within lease + sweep interval).

Nothing on the way of a job waits for RabbitMQ: enqueue, requeue and finish answer once the
store has the jobs and publish their tickets in the background (confirms awaited
``PUBLISH_WITHIN`` at most, then left to the outbox sweep), and consumers are set up in the
background while claims lease from the store. So while RabbitMQ is unreachable or slow (a
quorum queue without a leader after a crash) the engine degrades instead of failing: tickets
are deferred (logged), claim keeps leasing from the store, and ``wait_for_work`` waits on the
store alone (workers poll). While ``connect_robust`` is between attempts nothing is tried (the
robust channel's own calls would wait for the reconnect). ``ping`` raises
``BackendUnavailable``, so ``/readyz`` tells; so does ``open`` (a process that never reached
RabbitMQ cannot enqueue). ``connect_robust`` reconnects (every ``reconnect_interval``
seconds, a URL option, default 5) and reopens the channels; ``_on_reconnect`` then drops
the dead consumers and held tickets so that the next claim or wait consumes afresh. A consumer
and a held ticket are dead when the channel they came on is closed (or the consumer's tag left
it): aio-pika reopens the channels one after another before it runs ``_on_reconnect``, and a
claim in between consumes on the reopened channel, a live consumer to keep. A consumer
that RabbitMQ cancels (Basic.Cancel: its queue was deleted) is forgotten with its queue's
declaration (``_on_cancelled``), so the next claim or wait declares the queue again. A call
in flight as the connection drops fails however aiormq fails it, a bare ``Exception`` or a
``CancelledError`` included (``outage.dropped``): each becomes ``BackendUnavailable``, never a
worker's exit. An outage is logged once as it starts ("RabbitMQ connection lost: …;
reconnecting") and once as it ends ("reconnected to …"); the AMQP client's own records of
the loss it handles go to DEBUG (``outage.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
)

from conveyor.backends.amqp.outage import DOWN, EXPECTED_CHATTER, dropped, quiet_expected_chatter, reasonless
from conveyor.backends.amqp.outbox import Outbox, Ticket, tickets_for, wake_tickets_for_delayed
from conveyor.backends.amqp.url import HEARTBEAT, parse_url
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
from conveyor.core.errors import BackendUnavailable, ConfigurationError
from conveyor.core.job import Job, Status
from conveyor.core.queues import QueueSettings

log = logging.getLogger("conveyor.amqp")

_ACK_FAILED: tuple[type[BaseException], ...] = (*DOWN, aio_pika.exceptions.MessageProcessError)
#: Longer than the longest lease (visibility_timeout ≤ 12 h), in ms.
CONSUMER_TIMEOUT_MS = 13 * 3600 * 1000
#: A held ticket not acked by a claim within this long (its worker is busy) is acked.
HOLD = 2.0
CONNECT_TIMEOUT = 5.0
#: Bound on counting a queue's tickets (answers take milliseconds).
RPC_TIMEOUT = 5.0
#: Bound on the confirms of one publish. A quorum queue that came back from a crash without a
#: leader (rabbitmq-server#10070) confirms nothing until it has one: the tickets are then left to
#: the outbox sweep, and an enqueue still answers well within the API's 10 s bound.
PUBLISH_WITHIN = 5.0
#: Tickets published per round of the background publisher (each round's confirms are awaited
#: ``PUBLISH_WITHIN`` at most: 5,000 did not always make it while bulk enqueues kept the loop busy).
PUBLISH_ROUND = 1000
#: Tickets waiting for the background publisher at most; beyond, they are left to the outbox sweep.
MAX_OUTGOING = 100_000
#: How long ``close`` lets the background publisher finish. The app bounds a whole close at 5 s
#: (``core/app.py``): waiting out a round's ``PUBLISH_WITHIN`` and more had the app cut the close
#: short, with the connection and the store left open.
CLOSE_SETTLE = 3.0


class AMQPBackend(Backend):
    """RabbitMQ for delivery wake-ups, ``store`` (any other engine) for the job records."""

    def __init__(self, url: str, store: Backend) -> None:
        self.url = url
        self.amqp_url, self.prefix = parse_url(url)
        parts = urlsplit(self.amqp_url)
        self._address = f"{parts.hostname or 'localhost'}:{parts.port or 5672}"
        self._where = f"RabbitMQ at {self._address}"
        self.store = store
        self.outbox = Outbox(store)
        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractChannel | None = None  #: publisher confirms on
        self._sub: AbstractChannel | None = None  #: consumers, manual acks
        self._declared: set[str] = set()
        self._declaring: dict[str, asyncio.Future[None]] = {}
        #: queue → its consumer and the channel it lives on (``_consuming``)
        self._consumers: dict[str, tuple[AbstractQueue, ConsumerTag, aiormq.Channel]] = {}
        self._prefetch = 0
        #: tickets delivered and not acked yet: when, on which channel (their delivery tags' own)
        self._held: deque[tuple[float, aiormq.abc.AbstractChannel, AbstractIncomingMessage]] = deque()
        self._arrived = asyncio.Event()
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        #: Consumer set-up runs beside claims and waits, never in their way (``_start_consuming``).
        self._setup: asyncio.Task[None] | None = None
        #: Tickets to publish, and the task publishing them (``_publish_later``).
        self._outgoing: list[Ticket] = []
        self._publisher: asyncio.Task[None] | None = None
        self._warned = 0.0
        #: The connection was lost and that was said; cleared (and said) when it reconnects.
        self._lost = False

    def __repr__(self) -> str:
        return f"AMQPBackend({self.url!r}, {self.store!r})"

    def rabbit_queue(self, queue: str) -> str:
        return f"{self.prefix}.{queue}"

    # -- connection -----------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store, connect to RabbitMQ (``BackendUnavailable`` if it does not answer)."""
        await self.store.open()
        quiet_expected_chatter()
        try:
            self._conn = await asyncio.wait_for(
                aio_pika.connect_robust(self.amqp_url, timeout=CONNECT_TIMEOUT,
                                        client_properties={"connection_name": "conveyor"}),
                CONNECT_TIMEOUT + 1)
            self._pub = await self._conn.channel(publisher_confirms=True)
            self._sub = await self._conn.channel(publisher_confirms=False)
            self._sub.close_callbacks.add(self._on_consumers_closed)
        except aiormq.exceptions.InvalidFrameError as exc:
            await self.close()
            if "Connection.Close" not in str(exc):
                raise self._unavailable(exc) from exc
            # RabbitMQ closed the connection it had just authenticated: the virtual host
            vhost = unquote(urlsplit(self.amqp_url).path[1:]) or "/"
            raise ConfigurationError(f"{self._where} refused virtual host {vhost!r}: it does not exist, or "
                                     f"this user may not use it (rabbitmqctl list_vhosts, list_permissions)") from None
        except DOWN as exc:
            await self.close()
            if isinstance(exc, TimeoutError) and not str(exc):  # connected, and then silence
                raise BackendUnavailable(f"{self._where} did not answer within {CONNECT_TIMEOUT:g} s") from exc
            raise self._unavailable(exc) from exc
        self._conn.reconnect_callbacks.add(self._on_reconnect)
        self._conn.close_callbacks.add(self._on_lost)
        self._reaper = asyncio.create_task(self._reap_held())

    async def close(self) -> None:
        """Let publishes under way finish (``CLOSE_SETTLE``); close consumers, channels, connection, store."""
        await self._settle(CLOSE_SETTLE)
        for task in (self._reaper, self._setup, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._reaper = self._setup = self._publisher = None
        self._outgoing.clear()
        conn, self._conn = self._conn, None
        self._pub = self._sub = None
        self._forget_consumers()
        self._declared.clear()
        self._held.clear()
        self._prefetch = 0
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5.0)
        await self.store.close()

    async def setup_warnings(self) -> list[str]:
        return await self.store.setup_warnings()  # the job records are the store's (quorum queues are durable)

    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` unless both RabbitMQ and the store answer."""
        await self.store.ping()
        conn = self._conn
        if conn is None or conn.is_closed or self._pub is None or self._pub.is_closed:
            raise BackendUnavailable(f"{self._where} is unreachable (connection closed; reconnecting)")
        with self._guard():
            async with conn.channel() as ch:  # one round trip: open and close a channel
                await ch.close()

    async def drop(self) -> None:
        """Delete this prefix's RabbitMQ queues and the store's namespace (tests, reset tooling)."""
        self._outgoing.clear()  # the queues go: their tickets with them
        await self._settle()  # RabbitMQ 3.10 crashes the connection that publishes to a queue being deleted
        if self._setup is not None:  # the queues it declares are this prefix's too
            await asyncio.wait([self._setup], timeout=RPC_TIMEOUT + 1)
        names = {self.rabbit_queue(q.name) for q in await self.store.queues()} | self._declared
        names.add(self.rabbit_queue("default"))
        for queue, tag, _ in list(self._consumers.values()):
            with contextlib.suppress(*DOWN):
                await queue.cancel(tag)
        self._forget_consumers()
        self._held.clear()
        if self._conn is not None:
            for name in sorted(names):
                with contextlib.suppress(*DOWN):
                    async with self._conn.channel() as ch:
                        await ch.queue_delete(name)
        self._declared.clear()
        drop = getattr(self.store, "drop", None)
        if drop is not None:
            await drop()

    def _connected(self) -> bool:
        """Whether the connection is up now (``connect_robust`` is not between attempts)."""
        conn = self._conn
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    def _on_reconnect(self, _: AbstractRobustConnection | None) -> None:
        """``connect_robust`` reconnected and reopened the channels: start consuming afresh.

        The consumers made on the old channels are gone (``get_queue(ensure=False)`` queues are
        not restored by the robust channel), and the held tickets' delivery tags died with them
        (RabbitMQ put those tickets back). Forget both; the next claim or ``wait_for_work``
        consumes again, and it is woken now so that happens at once. A consumer made since the
        consumer channel reopened (a claim while aio-pika reopened the other channels, before
        this runs) is live, and so are its tickets: forgetting them had the next claim consume
        again (two consumers from one worker) and left those tickets unacked.
        """
        self._forget_dead()
        self._declared.clear()
        self._arrived.set()
        self._lost = False
        EXPECTED_CHATTER.reconnected()
        log.info("reconnected to %s; consuming tickets again", self._where)

    def _on_lost(self, conn: AbstractConnection | None, exc: BaseException | None) -> None:
        """The connection closed under us: say so once for the outage (``_warn`` holds its lines
        until ``_on_reconnect`` says it works again)."""
        if self._lost or self._conn is None or conn is None or conn.is_closed or conn.close_called:
            return  # said already, or closed by ``close``
        self._lost = True
        detail = (str(exc).strip() if exc is not None else "") or "closed"
        log.warning("RabbitMQ connection lost: %s (%s); reconnecting every %s s, the store alone serves meanwhile",
                    self._address, detail.splitlines()[0], getattr(conn, "reconnect_interval", "?"))

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        if isinstance(exc, BackendUnavailable):
            return exc
        detail = str(exc).strip() or ("connection closed" if reasonless(exc) else type(exc).__name__)
        return BackendUnavailable(f"{self._where} is unreachable: {detail.splitlines()[0]}")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except BackendUnavailable:
            raise
        except asyncio.CancelledError as exc:
            if not dropped(exc):
                raise
            raise self._unavailable(exc) from exc
        except Exception as exc:
            if not dropped(exc):
                raise
            raise self._unavailable(exc) from exc

    def _warn(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if self._lost or reasonless(exc):  # a lost connection: ``_on_lost`` says it, once
            return
        if now - self._warned > 10.0:
            self._warned = now
            log.warning("%s: %s", what, self._unavailable(exc))

    # -- RabbitMQ queues and tickets ------------------------------------------------------
    async def _declare(self, queue: str) -> str:
        """Declare ``<prefix>.<queue>`` once per connection; its name.

        One declaration at a time per queue: RabbitMQ 3.10 may answer a second, concurrent
        declaration of a new quorum queue before the queue runs, and a consume on it then
        crashes the channel, and with it the connection (541 INTERNAL_ERROR, ``noproc`` in
        ``rabbit_quorum_queue:consume``)."""
        name = self.rabbit_queue(queue)
        if name in self._declared:
            return name
        declaring = self._declaring.get(name)
        if declaring is None:
            declaring = self._declaring[name] = asyncio.ensure_future(self._declare_now(queue, name))
            declaring.add_done_callback(lambda done: self._declared_or_not(name, done))
        await asyncio.shield(declaring)  # a caller cancelled does not cancel the others' declaration
        return name

    def _declared_or_not(self, name: str, declaring: asyncio.Future[None]) -> None:
        if self._declaring.get(name) is declaring:
            del self._declaring[name]
        if not declaring.cancelled():
            declaring.exception()  # retrieved: each caller still awaiting it gets it raised

    async def _declare_now(self, queue: str, name: str) -> None:
        assert self._conn is not None
        settings = await self.store.queue_settings(queue)
        arguments: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": settings.max_deliveries}
        if self._server_version() >= (3, 12):
            arguments["x-consumer-timeout"] = CONSUMER_TIMEOUT_MS
        try:
            async with self._conn.channel() as ch:
                await ch.declare_queue(name, durable=True, arguments=arguments)
        except aio_pika.exceptions.ChannelPreconditionFailed:
            # declared earlier with other arguments (e.g. max_deliveries changed since): keep it
            async with self._conn.channel() as ch:
                await ch.declare_queue(name, passive=True)
        self._declared.add(name)

    def _server_version(self) -> tuple[int, ...]:
        props: Mapping[str, Any] = {}
        with contextlib.suppress(Exception):
            assert self._conn is not None
            props = self._conn.transport.connection.server_properties  # type: ignore[union-attr]
        raw = props.get("version", b"0")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            return tuple(int(p) for p in text.split(".")[:2])
        except ValueError:
            return (0,)

    async def publish(self, tickets: Sequence[Ticket]) -> None:
        """Publish ``tickets`` and wait for RabbitMQ's confirms (``BackendUnavailable`` if down)."""
        if not tickets:
            return
        if self._pub is None or not self._connected():
            raise BackendUnavailable(f"{self._where} is not connected")
        try:
            async with asyncio.timeout(PUBLISH_WITHIN):  # outside the guard: its TimeoutError is this bound's
                with self._guard():
                    names = {t.queue: await self._declare(t.queue) for t in tickets}
                    exchange = self._pub.default_exchange
                    await asyncio.gather(*(
                        exchange.publish(
                            aio_pika.Message(t.job_id.encode(), message_id=t.job_id, content_type="text/plain",
                                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                            routing_key=names[t.queue])
                        for t in tickets))
        except TimeoutError as exc:
            raise BackendUnavailable(f"{self._where} did not confirm {len(tickets)} ticket(s) "
                                     f"within {PUBLISH_WITHIN:g} s") from exc

    def _publish_later(self, tickets: Sequence[Ticket]) -> None:
        """Publish ``tickets`` in the background: the store has the jobs, the tickets only wake
        workers sooner, and a RabbitMQ slow to confirm (a quorum queue without a leader after a
        crash, rabbitmq-server#10070) must not hold up an enqueue or an outcome. One task
        publishes what gathered while its last round waited for confirms."""
        if len(self._outgoing) + len(tickets) > MAX_OUTGOING:
            self._warn(f"{len(tickets)} ticket(s) deferred to the outbox sweep",
                       BackendUnavailable(f"{MAX_OUTGOING:,} tickets already wait for {self._where}"))
            return
        self._outgoing.extend(tickets)
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish_outgoing())

    async def _publish_outgoing(self) -> None:
        while self._outgoing:
            batch = self._outgoing[:PUBLISH_ROUND]
            del self._outgoing[:PUBLISH_ROUND]
            await self._publish_soft(batch)

    async def _settle(self, within: float = PUBLISH_WITHIN + 1) -> None:
        """Let the background publisher finish (``within`` seconds at most)."""
        if self._publisher is not None and not self._publisher.done():
            await asyncio.wait([self._publisher], timeout=within)

    async def _publish_soft(self, tickets: Sequence[Ticket]) -> None:
        """Publish; an outage defers the tickets to the sweep's top-up instead of failing."""
        try:
            await self.publish(tickets)
        except BackendUnavailable as exc:
            self._warn(f"{len(tickets)} ticket(s) deferred to the outbox sweep", exc)
        except aio_pika.exceptions.DeliveryError as exc:
            self._warn(f"{len(tickets)} ticket(s) not confirmed; deferred to the outbox sweep", exc)

    async def ticket_count(self, queue: str) -> int:
        """Ready (not yet delivered) tickets of ``queue`` in RabbitMQ."""
        assert self._conn is not None
        name = await self._declare(queue)
        async with self._conn.channel() as ch:
            q = await ch.declare_queue(name, passive=True)
        result = q.declaration_result
        return int(result.message_count or 0)

    async def _ticket_count_bounded(self, queue: str) -> int:
        return await asyncio.wait_for(self.ticket_count(queue), RPC_TIMEOUT)

    def _start_consuming(self, queues: Sequence[str], prefetch: int) -> asyncio.Task[None] | None:
        """Have consumers of ``queues`` with ``prefetch`` set up in the background unless they are;
        the task doing it, if any. Claims lease from the store and waits wait on it meanwhile: a
        RabbitMQ slow to answer (a quorum queue electing its leader) delays wake-ups, not jobs."""
        if self._setup is not None and not self._setup.done():
            return self._setup
        if max(1, prefetch) == self._prefetch and all(self._consuming(q) for q in queues):
            return None
        if not self._connected():
            return None  # ``_on_reconnect`` wakes the waiters; their next claim or wait sets up
        self._setup = asyncio.create_task(self._consume_soft(queues, prefetch))
        return self._setup

    async def _consume_soft(self, queues: Sequence[str], prefetch: int) -> None:
        try:
            await self._consume(queues, prefetch)
        except BackendUnavailable as exc:
            self._warn("consuming tickets failed; workers claim from the store alone", exc)

    async def _consume(self, queues: Sequence[str], prefetch: int) -> None:
        """Consume tickets of ``queues`` with ``prefetch`` unacked tickets at most per queue."""
        # While the connection is down the robust channel's calls wait for the reconnect
        # (set_qos does): fail at once instead when it is down now (one lost between the calls
        # below holds them until the reconnect, then they consume on the new channel). No call
        # here is cut short: this runs beside the claims (``_start_consuming``), and aiormq
        # closes a channel whose call was cancelled; a dead connection fails the calls by the
        # AMQP heartbeat.
        if self._sub is None or not self._connected():
            raise BackendUnavailable(f"{self._where} is not connected (reconnecting)")
        async with self._lock:
            with self._guard():
                prefetch = max(1, prefetch)
                if prefetch != self._prefetch:
                    await self._sub.set_qos(prefetch_count=prefetch)
                    self._prefetch = prefetch
                for queue in queues:
                    if self._consuming(queue):
                        continue
                    name = await self._declare(queue)
                    # the channel under the robust one is new after each reconnect: tell it again
                    (await self._sub.get_underlay_channel()).on_consumer_cancel_callbacks.add(self._on_cancelled)
                    q = await self._sub.get_queue(name, ensure=False)
                    tag = await q.consume(self._on_ticket, no_ack=False)
                    # the channel it consumed on, or a newer one (that one closed since): then
                    # the tag is not on it, and the consumer counts as dead, as it is
                    channel = await self._sub.get_underlay_channel()
                    dead = self._consumers.get(queue)
                    if dead is not None:  # replaced before a reconnect forgot it
                        EXPECTED_CHATTER.cancel_said_for.discard(dead[1])
                    self._consumers[queue] = (q, tag, cast(aiormq.Channel, channel))
                    EXPECTED_CHATTER.cancel_said_for.add(tag)

    def _consuming(self, queue: str) -> bool:
        """Whether ``queue`` has a live consumer: its channel open and its tag still on it."""
        consumer = self._consumers.get(queue)
        if consumer is None:
            return False
        _, tag, channel = consumer
        return not channel.is_closed and tag in channel.consumers

    def _on_consumers_closed(self, *_: object) -> None:
        """The consumer channel closed (RabbitMQ closed it, or it was lost with the connection):
        its consumers, its prefetch and its held tickets' delivery tags went with it. Forget
        them, and wake the waiters, so that the next claim or wait consumes afresh (the robust
        channel reopens itself, but without the consumers)."""
        self._forget_dead()
        self._prefetch = 0
        self._arrived.set()

    def _forget_dead(self) -> None:
        """Forget the consumers that are not live and the tickets held from closed channels
        (their delivery tags died with them; RabbitMQ put those tickets back)."""
        for queue in [queue for queue in self._consumers if not self._consuming(queue)]:
            EXPECTED_CHATTER.cancel_said_for.discard(self._consumers.pop(queue)[1])
        self._held = deque(held for held in self._held if not held[1].is_closed)

    def _forget_consumers(self) -> None:
        for _, tag, _ in self._consumers.values():
            EXPECTED_CHATTER.cancel_said_for.discard(tag)
        self._consumers.clear()

    def _on_cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """RabbitMQ cancelled a consumer of ours (Basic.Cancel: its queue was deleted, say): forget
        it and its queue's declaration, and wake the waiters, so that the next claim or wait
        declares the queue again and consumes it. The tickets it delivered stay held: acking
        them is harmless (RabbitMQ 3.10 keeps their delivery tags on the channel, the queue gone)."""
        for queue, (q, tag, _) in list(self._consumers.items()):
            if tag == frame.consumer_tag:
                del self._consumers[queue]
                EXPECTED_CHATTER.cancel_said_for.discard(tag)
                self._declared.discard(q.name)
                self._arrived.set()
                log.warning("RabbitMQ cancelled the consumer of queue %s (deleted?); declaring it and consuming "
                            "it again", q.name)

    async def _on_ticket(self, message: AbstractIncomingMessage) -> None:
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # its channel closed since: RabbitMQ puts it back
        self._held.append((time.monotonic(), channel, message))
        self._arrived.set()

    async def _ack(self, count: int) -> None:
        """Ack the ``count`` oldest held tickets (one ``multiple`` ack per channel)."""
        count = min(count, len(self._held))
        if count <= 0:
            return
        # tickets of one channel arrive in delivery-tag order: acking its last acks all
        last = {id(channel): message for _, channel, message in
                (self._held.popleft() for _ in range(count)) if not channel.is_closed}
        for message in last.values():
            try:
                await message.ack(multiple=True)
            except (asyncio.CancelledError, Exception) as exc:
                if not (isinstance(exc, _ACK_FAILED) or dropped(exc)):
                    raise
                # after a reconnect the old tags are void: RabbitMQ redelivers those tickets
                self._warn("ticket ack failed", exc)

    async def _reap_held(self) -> None:
        """Ack tickets held while this worker is busy (another worker's poll takes the job)."""
        while True:
            await asyncio.sleep(HOLD / 2)
            if self._held and time.monotonic() - self._held[0][0] > HOLD:
                await self._ack(len(self._held))

    # -- submit ---------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """Register in the store (atomic), then publish tickets with confirms in the background (the outbox)."""
        stored = await self.store.enqueue(jobs)
        created = [job for job, created in stored if created]
        tickets = tickets_for(created) + wake_tickets_for_delayed(created)
        if tickets:
            self._publish_later(tickets)
        return stored

    # -- leasing --------------------------------------------------------------------------
    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: float) -> list[Lease]:
        """Lease from the store; ack the tickets that stood for what was leased (or was stale)."""
        self._start_consuming(queues, limit)
        leases = await self.store.claim(queues, limit, worker_id, now)
        await self._ack(len(leases) if len(leases) >= limit else len(self._held))
        return leases

    async def heartbeat(self, worker: WorkerInfo, leases: Mapping[str, str], now: float) -> HeartbeatReply:
        return await self.store.heartbeat(worker, leases, now)

    def twin(self) -> Backend:
        return self.store.twin()  # leases live in the store

    async def finish(self, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        """Apply in the store; a job handed back gets a fresh ticket."""
        applied = await self.store.finish(outcomes, now)
        back = [o.job_id for o, ok in zip(outcomes, applied, strict=True) if ok and o.status is Status.QUEUED]
        if back:
            try:
                self._publish_later(tickets_for(await self.store.get_jobs(back)))
            except BackendUnavailable as exc:  # the outcomes are in: the sweep tops up their tickets
                self._warn(f"{len(back)} ticket(s) deferred to the outbox sweep", exc)
        return applied

    async def set_progress(self, job_id: str, token: str, progress: Mapping[str, Any], now: float) -> bool:
        return await self.store.set_progress(job_id, token, progress, now)

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a ticket arrives for ``queues`` (or one is held), when the store's own wait
        returns (a delayed or retrying job comes due, or the store's wake-ups), or after ``timeout``."""
        self._start_consuming(queues, self._prefetch or 1)
        if self._held:
            return
        self._arrived.clear()
        store_wait = asyncio.ensure_future(self.store.wait_for_work(queues, timeout))
        store_wait.add_done_callback(lambda _: self._arrived.set())
        try:
            with contextlib.suppress(TimeoutError):
                # the store's wait returns at the timeout itself: this only bounds a stuck one
                async with asyncio.timeout(timeout + 0.5):
                    await self._arrived.wait()
            if not store_wait.done():  # a ticket came first: end the store's wait, not cancel it
                await self._end_store_wait(store_wait)
        finally:
            if not store_wait.done():
                store_wait.cancel()
                await asyncio.wait([store_wait])
        if not store_wait.cancelled():
            store_wait.result()  # the store's error, if it failed

    async def _end_store_wait(self, store_wait: asyncio.Future[None]) -> None:
        """Have the store's wait return (a cancelled Redis BLPOP costs its connection); the
        caller cancels it if it is still running after this."""
        with contextlib.suppress(BackendUnavailable, TimeoutError):
            if await self.store.end_wait():
                async with asyncio.timeout(1.0):
                    await asyncio.wait([store_wait])

    # -- reads ----------------------------------------------------------------------------
    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        return await self.store.get_jobs(ids)

    async def list_jobs(self, query: JobQuery) -> Page:
        return await self.store.list_jobs(query)

    async def revisions(self, ids: Sequence[str]) -> dict[str, int]:
        return await self.store.revisions(ids)

    # -- admin ----------------------------------------------------------------------------
    async def cancel(self, job_id: str, now: float) -> Job | None:
        return await self.store.cancel(job_id, now)

    async def requeue(
        self, queue: str | None, ids: Sequence[str] | None, statuses: Sequence[Status], now: float
    ) -> list[Job]:
        """Requeue in the store (redrive, retry); the jobs put back get tickets."""
        jobs = await self.store.requeue(queue, ids, statuses, now)
        if jobs:
            self._publish_later(tickets_for(jobs))
        return jobs

    async def purge(self, queue: str, now: float) -> int:
        return await self.store.purge(queue, now)

    async def queue_settings(self, name: str) -> QueueSettings:
        return await self.store.queue_settings(name)

    async def save_queue_settings(self, name: str, settings: QueueSettings,
                                  fields: Collection[str] | None = None) -> None:
        await self.store.save_queue_settings(name, settings, fields)

    async def queues(self, names: Sequence[str] | None = None) -> list[QueueInfo]:
        return await self.store.queues(names)

    # -- webhooks -------------------------------------------------------------------------
    async def due_webhooks(self, now: float, limit: int, lease: float) -> list[tuple[Job, int]]:
        return await self.store.due_webhooks(now, limit, lease)

    async def webhook_attempted(self, job_id: str, delivered: bool, next_at: float | None) -> None:
        await self.store.webhook_attempted(job_id, delivered, next_at)

    # -- housekeeping and registry --------------------------------------------------------
    async def sweep(self, now: float, limit: int = 500) -> SweepReport:
        """The store's sweep, then the outbox's top-up of tickets (at most every 2 s)."""
        report = await self.store.sweep(now, limit)
        if not self._connected():
            return report  # the top-up waits for the reconnect (a robust channel would wait for it)
        try:
            with self._guard():
                await self.outbox.reconcile(self._ticket_count_bounded, self.publish, force=report.requeued > 0)
        except BackendUnavailable as exc:
            self._warn("outbox sweep failed", exc)
        return report

    async def unregister_worker(self, worker_id: str) -> None:
        await self.store.unregister_worker(worker_id)

    async def workers(self, now: float) -> list[WorkerInfo]:
        return await self.store.workers(now)


#: HEARTBEAT lives in ``url.py``; tests/e2e/test_many_hosts imports it from here.
__all__ = ["HEARTBEAT", "AMQPBackend"]
