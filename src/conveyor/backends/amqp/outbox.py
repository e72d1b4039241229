"""Tickets: the RabbitMQ messages that tell idle workers a job is ready.

A ticket is a persistent message on the queue's quorum queue, body and ``message_id`` = the
job id (or ``wake`` for a top-up ticket). It is a wake-up, not the job: the job store decides
which job a claim leases (priority 9→0, then FIFO, limits, pause), so a duplicate, lost or
stale ticket never loses, doubles or reorders a job; at worst it costs a wake-up.

The outbox: registering a job (``store.enqueue``) commits it, and the ticket is published
afterwards with a publisher confirm. A process that dies in between, or a RabbitMQ outage at
that moment, leaves a ``queued`` job without a ticket: it is still claimed by any worker's
next claim (workers claim whenever they have a free slot and at least every
``wait_for_work`` timeout), and the sweep that every worker runs tops up the tickets of a
queue whose store holds ready jobs while RabbitMQ holds none (``reconcile``), so idle workers
wake up for it. Jobs that become ready later inside the store (a delay or retry coming due,
dependencies released, an expired lease put back) are covered by the same top-up; a waiting
worker also learns from the store when its delayed and retrying jobs come due, and a job
enqueued with a delay gets a ``wake`` ticket so that a waiting worker learns its due time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from conveyor.backends.base import Backend
from conveyor.core.job import Job, Status

#: Top-up tickets published per queue and sweep: one ticket wakes a worker that then claims
#: every free slot, and keeps claiming while it fills them.
TOP_UP = 4


@dataclass(frozen=True, slots=True)
class Ticket:
    queue: str
    job_id: str  #: ``wake`` for a top-up ticket


def tickets_for(jobs: Sequence[Job]) -> list[Ticket]:
    """Tickets for the jobs that are claimable now."""
    return [Ticket(job.queue, job.id) for job in jobs if job.status is Status.QUEUED]


def wake_tickets_for_delayed(jobs: Sequence[Job]) -> list[Ticket]:
    """One ``wake`` ticket per queue of the delayed jobs among ``jobs`` (the worker it wakes reads
    their due time from the store as it waits again)."""
    queues = dict.fromkeys(job.queue for job in jobs if job.status is Status.SCHEDULED)
    return [Ticket(queue, "wake") for queue in queues]


class Outbox:
    """Tops up tickets of queues whose store has ready jobs while RabbitMQ has none."""

    def __init__(self, store: Backend, interval: float = 2.0) -> None:
        self.store = store
        self.interval = interval
        self._next = 0.0

    async def reconcile(
        self,
        ticket_count: Callable[[str], Awaitable[int]],
        publish: Callable[[Sequence[Ticket]], Awaitable[None]],
        force: bool = False,
    ) -> int:
        """At most every ``interval`` seconds: publish top-up tickets; how many."""
        moment = time.monotonic()
        if not force and moment < self._next:
            return 0
        self._next = moment + self.interval
        tickets: list[Ticket] = []
        for info in await self.store.queues():
            ready = info.counts.get("queued", 0)
            if ready <= 0 or info.settings.paused:
                continue
            if await ticket_count(info.name) == 0:
                tickets += [Ticket(info.name, "wake")] * min(ready, TOP_UP)
        if tickets:
            await publish(tickets)
        return len(tickets)
