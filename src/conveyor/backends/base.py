"""The seam between Conveyor's rules and the engines that persist them.

An engine stores jobs, leases and queue settings, and applies in bulk what the layer above
decided. Every method is async and batch-first. Rules that need no engine (retry decisions,
backoff, timeouts, validation, DAG checks) live above, in ``conveyor.core`` and
``conveyor.worker``. Rules that must be atomic with the write live in each engine and are
pinned down by the conformance suite (``tests/conformance``):

- ``enqueue``: a job with an idempotency key already stored returns the stored job; a job
  whose parents have not all succeeded is ``waiting``; one whose parent ended
  failed/cancelled/expired is ``cancelled`` at once.
- ``claim``: ready jobs (``queued``, or ``scheduled``/``retrying`` once ``scheduled_at`` passed)
  of unpaused queues, 9→0 priority, then oldest first; each claim is a new lease with a new
  token, ``deliveries + 1``, ``status = running``.
- ``finish``: fenced by token; a ``succeeded`` job releases its ``waiting`` children whose
  parents all succeeded; a ``failed``/``cancelled`` job cancels its dependents transitively.
- ``sweep``: expired leases go back to ``queued`` (or ``failed`` with
  ``DeliveryLimitExceeded`` once ``deliveries >= max_deliveries``); ready jobs older than the
  retention become ``expired``; terminal jobs older than ``result_ttl`` are deleted; dead
  workers are dropped from the registry. Each in bounded batches.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.errors import QueueNotFound
from conveyor.core.job import Job, Status
from conveyor.core.queues import QueueSettings

#: what an enqueue's caller gets: each job as stored, and whether this call created it
Enqueued = list[tuple[Job, bool]]


@dataclass(frozen=True, slots=True)
class Lease:
    """A job handed to one worker until ``job.lease_expires_at``, unless extended."""

    job: Job
    token: str  #: the fencing token: only its holder may report on the job


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the layer above decided for a leased job; applied only if ``token`` still holds."""

    job_id: str
    token: str
    #: ``succeeded``, ``failed``, ``cancelled``, ``retrying`` or ``queued`` (handed back).
    status: Status
    result: Any = None
    error: Mapping[str, Any] | None = None
    #: For ``retrying``: when the next attempt may start.
    scheduled_at: float | None = None
    #: The job's ``attempt`` after this outcome (``retrying`` bumps it).
    attempt: int | None = None
    #: For ``queued`` (a hand-back on shutdown): do not count this delivery.
    uncount_delivery: bool = False


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """What a worker learns from extending its leases."""

    lost: frozenset[str] = frozenset()  #: job ids whose lease passed to someone else
    cancel_requested: frozenset[str] = frozenset()  #: job ids a user asked to cancel


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Filters and paging for listing jobs (newest first)."""

    status: Status | None = None
    task: str | None = None
    queue: str | None = None
    limit: int = 50
    cursor: str | None = None  #: an opaque ``next_cursor`` from a previous page


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Job]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """Counts and settings of one queue."""

    name: str
    settings: QueueSettings
    counts: Mapping[str, int] = field(default_factory=dict)  #: jobs per status

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        return {
            "name": self.name,
            "queued": c.get("queued", 0),
            "scheduled": c.get("scheduled", 0) + c.get("retrying", 0) + c.get("waiting", 0),
            "running": c.get("running", 0),
            "failed": c.get("failed", 0),
            **self.settings.to_json(),
        }


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker process, as registered in the backend."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    running: tuple[str, ...] = ()
    started_at: float = 0.0
    last_heartbeat: float = 0.0

    def to_json(self) -> dict[str, Any]:
        from conveyor.serialization import to_rfc3339

        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "running": list(self.running),
            "started_at": to_rfc3339(self.started_at),
            "last_heartbeat": to_rfc3339(self.last_heartbeat),
        }


@dataclass(frozen=True, slots=True)
class SweepReport:
    """How many records one sweep changed."""

    requeued: int = 0  #: expired leases put back
    dead: int = 0  #: expired leases that hit max_deliveries
    expired: int = 0  #: ready jobs past retention
    deleted: int = 0  #: finished records past result_ttl
    workers_dropped: int = 0

    @property
    def total(self) -> int:
        return self.requeued + self.dead + self.expired + self.deleted + self.workers_dropped


class Backend(abc.ABC):
    """One engine's storage of queues, jobs and leases. All times are epoch seconds."""

    #: Seconds without a heartbeat after which a worker is considered dead.
    WORKER_TTL = 15.0

    url: str  #: what ``create_backend`` was given

    def twin(self) -> Backend:
        """A new, unopened backend on the engine that holds this one's leases, for an event loop
        of another thread (the worker's lease keeper)."""
        from conveyor.backends import create_backend

        return create_backend(self.url)

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` unless the engine answers."""

    async def setup_warnings(self) -> list[str]:
        """The engine's settings under which it may lose accepted jobs, each said in a line (a
        worker logs them as it starts); none where there are none, or it cannot tell."""
        return []

    # -- submit -------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """Store ``jobs`` atomically; per job, the stored job and whether it was created.

        A job whose ``idempotency_key`` is already stored yields the stored job and ``False``.
        Unknown ``depends_on`` ids raise ``ValidationError``.
        """

    #: ``enqueue`` for synchronous callers without an event loop, where the engine has a
    #: cheaper way than running ``enqueue`` on one (thread-safe); ``close_blocking`` ends it.
    enqueue_blocking: Callable[[Sequence[Job]], list[tuple[Job, bool]]] | None = None

    def close_blocking(self) -> None:  # noqa: B027 - optional, like enqueue_blocking
        """Close what ``enqueue_blocking`` opened."""

    # -- leasing ------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: float) -> list[Lease]:
        """Lease up to ``limit`` ready jobs from ``queues``."""

    @abc.abstractmethod
    async def heartbeat(self, worker: WorkerInfo, leases: Mapping[str, str], now: float) -> HeartbeatReply:
        """Record the worker as alive and extend its leases (job id → token)."""

    @abc.abstractmethod
    async def finish(self, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        """Apply outcomes whose token still holds; per outcome, whether it was applied."""

    async def finish_and_claim(
        self, outcomes: Sequence[Outcome], queues: Sequence[str], limit: int, worker_id: str, now: float
    ) -> tuple[list[bool], list[Lease]]:
        """``finish(outcomes)``, then ``claim(...)``: a worker's cycle.

        The outcomes are applied before the claim, so a worker killed in between redelivers
        only the jobs it was running. Engines that can send both in one round trip override this.
        """
        applied = await self.finish(outcomes, now)
        return applied, await self.claim(queues, limit, worker_id, now)

    @abc.abstractmethod
    async def set_progress(self, job_id: str, token: str, progress: Mapping[str, Any], now: float) -> bool:
        """Record progress if ``token`` still holds."""

    @abc.abstractmethod
    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work may have arrived on ``queues``, or after ``timeout`` seconds."""

    async def end_wait(self) -> bool:
        """Make a ``wait_for_work`` of this backend that is in progress return soon, without
        cancelling it; whether it will (False: the caller cancels it instead). For engines
        where a cancelled wait costs its connection."""
        return False

    async def wait_and_claim(
        self, queues: Sequence[str], timeout: float, limit: int, worker_id: str
    ) -> list[Lease] | None:
        """``wait_for_work``; engines that can also claim up to ``limit`` jobs the moment work
        arrives (or at the timeout), in the same round trip, return those leases. None: nothing
        was claimed, the caller claims."""
        await self.wait_for_work(queues, timeout)
        return None

    #: ``wait_and_claim`` on a blocking client, for a worker's pool thread that runs the job it
    #: leases itself (no wake-up of the event loop and then of a thread in between); None where
    #: the engine has none. Thread-safe.
    wait_and_claim_blocking: Callable[[Sequence[str], float, int, str], list[Lease] | None] | None = None

    # -- reads --------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_jobs(self, ids: Sequence[str]) -> list[Job]:
        """The stored jobs among ``ids`` (unknown ids are left out)."""

    @abc.abstractmethod
    async def list_jobs(self, query: JobQuery) -> Page:
        """Jobs matching ``query``, newest first."""

    @abc.abstractmethod
    async def revisions(self, ids: Sequence[str]) -> dict[str, int]:
        """The current ``revision`` of each known job among ``ids`` (cheap change detection)."""

    # -- admin --------------------------------------------------------------------------
    @abc.abstractmethod
    async def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancel a pending job at once, or flag a running one; ``None`` if unknown."""

    @abc.abstractmethod
    async def requeue(
        self, queue: str | None, ids: Sequence[str] | None, statuses: Sequence[Status], now: float
    ) -> list[Job]:
        """Put jobs in ``statuses`` back to ``queued`` with attempts and deliveries reset, or to
        ``waiting`` while a parent is pending. A job of ``ids`` whose parent ended badly (or is
        gone) refuses the whole call with ``InvalidTransition``; a queue's redrive skips such jobs
        (``core.rules.retry_by_parents``)."""

    @abc.abstractmethod
    async def purge(self, queue: str, now: float) -> int:
        """Cancel every ready job of ``queue``; how many."""

    @abc.abstractmethod
    async def queue_settings(self, name: str) -> QueueSettings:
        """Stored settings of ``name`` (defaults when never set)."""

    @abc.abstractmethod
    async def save_queue_settings(self, name: str, settings: QueueSettings,
                                  fields: Collection[str] | None = None) -> None:
        """Store the settings of ``name``; with ``fields``, only those (a change made meanwhile to
        another setting, a pause say, is kept: each engine writes just the named ones)."""

    @abc.abstractmethod
    async def queues(self, names: Sequence[str] | None = None) -> list[QueueInfo]:
        """Every known queue (or ``names``) with counts per status."""

    async def queues_and(self, named: Sequence[str]) -> list[QueueInfo]:
        """Every known queue, plus those ``named`` (an app's, with zero counts), by name: the
        queues that exist for the API and the command line alike."""
        infos = await self.queues()
        missing = sorted(set(named) - {i.name for i in infos})
        if missing:
            infos += await self.queues(missing)
        return sorted(infos, key=lambda i: i.name)

    async def known_queue(self, name: str, named: Sequence[str]) -> QueueInfo:
        """The queue ``name`` of ``queues_and(named)``; ``QueueNotFound`` when it is not one."""
        for info in await self.queues_and(named):
            if info.name == name:
                return info
        raise QueueNotFound(f"no queue named {name!r}")

    # -- webhooks (a durable outbox: a job that turns terminal with a ``webhook`` is pending)
    @abc.abstractmethod
    async def due_webhooks(self, now: float, limit: int, lease: float) -> list[tuple[Job, int]]:
        """Pending webhook deliveries due by ``now`` (job, attempts made so far).

        Each returned delivery is hidden from other callers for ``lease`` seconds, so that two
        workers do not send it at once; a caller that dies lets it come due again.
        """

    @abc.abstractmethod
    async def webhook_attempted(self, job_id: str, delivered: bool, next_at: float | None) -> None:
        """Record a delivery attempt: done when ``delivered`` or ``next_at`` is ``None``."""

    # -- housekeeping and registry -------------------------------------------------------
    @abc.abstractmethod
    async def sweep(self, now: float, limit: int = 500) -> SweepReport:
        """Expired leases, retention, result_ttl and dead workers, at most ``limit`` of each."""

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """Drop a worker that stopped cleanly, handing back what its claims whose reply was lost
        leased (engines that remember such claims; else those jobs wait for their leases)."""

    @abc.abstractmethod
    async def workers(self, now: float) -> list[WorkerInfo]:
        """Workers whose last heartbeat is younger than ``WORKER_TTL``."""
