"""Waking idle workers: the LISTEN connection, the waits it ends, and the payloads of its channels.

Statements that make work claimable notify ``channel`` with the queue's name; those that store a
delayed or retrying job notify ``due_channel`` with ``<queue> <due>`` (:func:`announcements`). One
:class:`Listener` per backend holds a dedicated connection that LISTENs to both and rings the
:class:`Waiter` of each ``wait_for_work`` in progress on the queues named.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable, Iterator

import psycopg
from psycopg import sql

from conveyor.backends.postgres.connection import UNAVAILABLE


def announcements(due: Iterable[tuple[str, float]]) -> list[str]:
    """Payloads for the due channel: ``<queue> <due>``, the earliest per queue."""
    first: dict[str, float] = {}
    for queue, at in due:
        first[queue] = min(at, first.get(queue, at))
    return [f"{queue} {at!r}" for queue, at in sorted(first.items())]


class Waiter:
    """One ``wait_for_work`` in progress: its queues, and the earliest due time it knows of."""

    __slots__ = ("_fut", "due", "queues")

    def __init__(self, queues: frozenset[str]) -> None:
        self.queues = queues
        self.due = math.inf  #: epoch seconds; lowered by the due channel's announcements
        self._fut: asyncio.Future[None] | None = None

    def ring(self) -> None:
        """End the sleep in progress, if any."""
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


class Listener:
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
        self._waiters: list[Waiter] = []
        self.counter = 0  #: bumped on every notification and (re)connect
        self.last: dict[str, int] = {}  #: queue -> counter value of its last notification
        self.announced: dict[str, int] = {}  #: queue -> counter value of its last due announcement
        self.reconnected_at = 0  #: counter value at the last (re)connect: anything may have been missed
        self.ready = asyncio.Event()
        self.connects = 0

    def start(self) -> None:
        """Start listening, unless already."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="conveyor-pg-listener")

    async def stop(self) -> None:
        """Stop listening; the waits in progress end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._wake(None)  # the waits in progress end

    def changed_since(self, mark: int, queues: frozenset[str]) -> bool:
        """Whether ``queues`` may have work notified (or missed) since ``mark``."""
        return self.reconnected_at > mark or any(self.last.get(q, -1) > mark for q in queues)

    def announced_since(self, mark: int, queues: frozenset[str]) -> bool:
        """Whether a due time of ``queues`` may have been announced (or missed) since ``mark``."""
        return self.reconnected_at > mark or any(self.announced.get(q, -1) > mark for q in queues)

    @contextlib.contextmanager
    def waiter(self, queues: frozenset[str]) -> Iterator[Waiter]:
        """A waiter on ``queues``, rung by their notifications and earlier due times until exit."""
        waiter = Waiter(queues)
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
            except UNAVAILABLE:
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
            except UNAVAILABLE:
                pass
            finally:
                self.ready.clear()
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
