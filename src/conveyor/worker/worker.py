"""The worker: lease one job per free slot, run it, report its outcome, keep its lease.

Concurrency lives in one event loop: a claim loop (claims only for free slots; no hidden
prefetch), a flush loop (the ``Reporter`` writes outcomes and progress in batches), a heartbeat loop
(extends leases, learns of cancels and lost leases), a watchdog (exits when the claim loop stalls),
and the loops of ``Housekeeping`` (sweeps, queue settings, webhooks). ``run.py`` runs a worker in a
process; ``stopping.py`` bounds each step of its stop.
Job state lives in the backend, never here: a worker killed at any point loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from conveyor import metrics
from conveyor.backends import create_backend
from conveyor.backends.base import Backend, HeartbeatReply, Lease, Outcome, WorkerInfo
from conveyor.core import rules
from conveyor.core.app import Conveyor
from conveyor.core.checks import PARENT_NAMES
from conveyor.core.context import Context
from conveyor.core.errors import BackendUnavailable, ConfigurationError
from conveyor.core.job import Job, Status, error_info
from conveyor.core.task import Task
from conveyor.scheduler import run_scheduler
from conveyor.worker.execute import decide, execute, time_limit
from conveyor.worker.housekeeping import Housekeeping, sweep
from conveyor.worker.lease_keeper import LeaseKeeper
from conveyor.worker.pools import Call, Pool, ThreadPool
from conveyor.worker.reporter import Reporter
from conveyor.worker.stopping import SHUTDOWN_BOUND, cancel_within

log = logging.getLogger(__name__)

#: Exit code of a worker whose claim loop stalled (a supervisor should restart it).
EXIT_STALLED = 70
#: Seconds the event loop may be late before the worker warns that something blocks it.
BLOCKED_WARNING = 2.0
#: Seconds without a turn of the claim loop after which the worker is not ready (``/readyz``):
#: it turns at least once a second while it runs, every slot busy or none (while it backs off
#: from an outage, for up to 5 s, its failed claim says it is not ready already).
UNREADY_AFTER = 5.0


class Running(Call):
    """A job this worker holds a lease on.

    A sync job of the thread pool is itself the pool's ``Call`` (no coroutine per job); any
    other job runs in an asyncio task (``task``).
    """

    __slots__ = ("fn", "lease", "settled", "started", "task", "timer", "worker")
    ctx: Context  #: a job's call always has one

    def __init__(self, worker: Worker, lease: Lease, ctx: Context, fn: Task | None) -> None:
        super().__init__(ctx, fn)
        self.worker = worker
        self.lease = lease
        self.fn = fn
        self.task: asyncio.Task[None] | None = None
        #: the time limit of a job run as a ``Call``
        self.timer: asyncio.TimerHandle | None = None
        #: Set once an outcome was decided (or the job abandoned): later outcomes are dropped.
        self.settled = False
        self.started = time.monotonic()

    def run(self) -> Any:  # in a pool thread
        fn = self.fn
        assert fn is not None
        job = self.lease.job
        args, kwargs = fn.prepare(job.args, job.kwargs)
        return fn.fn(self.ctx, *args, **kwargs)

    def finished(self, result: Any, error: BaseException | None) -> None:  # on the loop
        self.worker._finished(self, result, error)


class _Wait(Call):
    """An idle worker's wait for work, in a pool thread (``Backend.wait_and_claim_blocking``).

    The thread runs the first sync job it leases itself, as soon as the engine's reply arrives:
    no wake-up of the loop and then of another thread before the job starts. ``finished`` (on the
    loop) registers and starts the leases before the thread's result for that job is settled.
    Unless the worker began to stop while the thread waited: then it runs nothing, and
    ``finished`` hands every lease back (``Worker._start``).
    """

    __slots__ = ("free", "future", "leases", "loop", "timeout", "worker")

    def __init__(self, worker: Worker, free: int, timeout: float, future: asyncio.Future[list[Lease] | None]) -> None:
        super().__init__(None, _Wait)
        self.worker = worker
        self.free = free
        self.timeout = timeout
        self.future = future
        self.loop = asyncio.get_running_loop()
        self.leases: list[Lease] | None = None

    def run(self) -> Any:  # in a pool thread
        worker = self.worker
        backend = worker._backend
        assert backend is not None and backend.wait_and_claim_blocking is not None
        self.leases = backend.wait_and_claim_blocking(worker.queues, self.timeout, self.free, worker.id)
        for lease in self.leases or ():
            worker._leased_off_loop[lease.job.id] = lease.token  # kept while the loop may be blocked
        if self.leases and not worker._stop.is_set():  # stopping: ``_start`` hands them back
            self.then = worker._runs_in_thread(self.loop, self.leases[0])
        return self.leases

    def finished(self, result: Any, error: BaseException | None) -> None:  # on the loop
        if self.leases:
            self.worker._start(self.leases, self.then if isinstance(self.then, Running) else None)
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(self.leases)


class Worker:
    """Runs jobs from ``queues`` of ``app`` until stopped (SIGTERM/SIGINT) or, in burst mode, idle."""

    def __init__(
        self,
        app: Conveyor,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        pool: str = "thread",
        grace: float = 30.0,
        scheduler: bool = True,
        burst: bool = False,
        app_spec: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        heartbeat: float = 0.5,
        stall_timeout: float = 60.0,
        backend: Backend | None = None,
    ) -> None:
        if pool not in ("thread", "process", "async"):
            raise ConfigurationError(f"unknown pool {pool!r}: use thread, process or async")
        if pool == "process" and app_spec is None:
            raise ConfigurationError("the process pool needs the app as 'module:attribute' (--app)")
        if pool != "process" and (max_tasks_per_child or max_memory_per_child):
            raise ConfigurationError("--max-tasks-per-child and --max-memory-per-child need --pool process "
                                     "(the thread and async pools run every job in the worker's own process)")
        from conveyor.webhooks import secret_key

        secret_key()  # a malformed CONVEYOR_WEBHOOK_SECRET is refused now, not at every delivery
        self.app = app
        self.queues = list(queues) if queues else app.queue_names()
        self.concurrency = concurrency or ((os.cpu_count() or 2) if pool == "process" else 8)
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        self.pool_kind = pool
        self.grace = grace
        self.scheduler = scheduler
        self.burst = burst
        self.app_spec = app_spec
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child  #: bytes
        self.heartbeat_interval = heartbeat
        self.stall_timeout = stall_timeout
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started_at = time.time()
        self.running: dict[str, Running] = {}
        self.exit_code = 0
        self._reporting = Reporter(self.id)
        #: sync jobs whose thread returned, their outcome not yet decided (``_decide_returned``)
        self._returned: list[tuple[Running, Any, BaseException | None]] = []
        self._deciding = False
        #: metrics not yet counted: counted by ``_count`` while the next claim is on its way
        self._uncounted_starts: list[tuple[list[Lease], float]] = []
        self._uncounted_ends: list[tuple[Job, Status, float]] = []
        #: the latest progress a job reported from its thread, until the loop takes it: written
        #: before the job returns, so its outcome on the loop cannot overtake it. Per lease: the
        #: thread of an earlier attempt past its time limit may still report while its retry runs
        self._reported: dict[tuple[str, str], dict[str, Any]] = {}
        self._stop = asyncio.Event()
        #: Set at shutdown, as the helper loops are cancelled: each also ends at its next turn,
        #: so a cancel swallowed below them (a race in asyncio or a client library) cannot hang it.
        self._closing = False
        #: A ``--burst`` worker found no more work (not stopped by a signal: that stop stays quick).
        self._ran_out = False
        self._slot_free = asyncio.Event()
        self._loop_tick = time.monotonic()
        self._backend: Backend | None = backend  #: opened by ``run`` unless given
        self._claim_task: asyncio.Task[None] | None = None
        self._pool: Pool | None = None
        self._max_deliveries: dict[str, int] = {}
        self._async_ran: set[str] = set()  #: async tasks run since the last heartbeat (suspects of a block)
        #: Leases a pool thread took (``_Wait``) that the loop has not started yet (job id → token):
        #: their heartbeats are owed too. Each change is one dict operation, safe from any thread.
        self._leased_off_loop: dict[str, str] = {}
        #: what the last claim and the last heartbeat raised (None: it was answered), for ``not_ready``
        self._claim_error: str | None = None
        self._heartbeat_error: str | None = None

    # -- public ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop taking jobs; running ones get ``grace`` seconds to finish."""
        if not self._stop.is_set():
            log.info("worker %s stopping: no new jobs, %d running", self.id, len(self.running))
        self._stop.set()

    def not_ready(self) -> str | None:
        """Why this worker is not ready (``/readyz`` answers 503 with it), or None: it runs its claim
        loop and the engine answers its claims and heartbeats. Safe from any thread."""
        if self._stop.is_set():
            return "the worker is stopping"
        if self._claim_task is None:
            return "the worker is starting (waiting for the engine)"
        quiet = time.monotonic() - self._loop_tick
        if quiet > UNREADY_AFTER:
            return f"the claim loop has not run for {quiet:.0f} s"
        if self._claim_error is not None:
            return f"claims fail: {self._claim_error}"
        if self._heartbeat_error is not None:
            return f"heartbeats fail: {self._heartbeat_error}"
        return None

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            self.id,
            socket.gethostname(),
            os.getpid(),
            tuple(self.queues),
            self.concurrency,
            tuple(self.running),
            self.started_at,
            time.time(),
        )

    async def run(self) -> int:
        """Work until stopped; the process exit code (0, or ``EXIT_STALLED``)."""
        backend = self._backend = self._backend or create_backend(self.app.url)
        self._install_signals()  # a stop while connecting: ``_register`` sees it and returns
        await backend.open()  # an engine that is not there at all: the error, at once
        self.app.bind(backend)
        try:
            if not await self._register(backend):
                return self.exit_code
            self._pool = self._make_pool()
            log.info(
                "worker %s ready: queues %s, concurrency %d, %s pool",
                self.id,
                ",".join(self.queues),
                self.concurrency,
                self.pool_kind,
            )
            housekeeping = Housekeeping(backend, self.id, burst=self.burst,
                                        refresh_queue_settings=self._refresh_queue_settings)
            helpers = [
                asyncio.create_task(c)
                for c in (
                    self._reporting.flush_loop(backend), self._heartbeat_loop(), self._watchdog_loop(),
                    housekeeping.sweep_loop(),
                )
            ]
            webhooks = asyncio.create_task(housekeeping.webhook_loop())
            if self.scheduler:
                helpers.append(asyncio.create_task(run_scheduler(self.app, self._stop)))
            keeper = LeaseKeeper(self, backend.twin(), self._heard)
            keeper.start()
            try:
                self._claim_task = asyncio.create_task(self._claim_loop())
                await self._claim_until_stopped(self._claim_task)
                await self._drain()
            finally:
                self._closing = True
                self._reporting.close()
                housekeeping.close()
                await cancel_within(helpers, SHUTDOWN_BOUND)
                keeper.stop()
                await asyncio.to_thread(keeper.join)
                await self._report_last(backend)
                await housekeeping.end_webhooks(webhooks, send_owed=self._ran_out and self.exit_code == 0)
        finally:
            if self._pool is not None:
                await self._pool.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_BOUND):
                    await backend.close()
        return self.exit_code

    async def _claim_until_stopped(self, claim: asyncio.Task[None]) -> None:
        """Run the claim loop until it ends; once stopping, give it ``SHUTDOWN_BOUND`` seconds to
        see that, then cancel it: a call to an engine that went silent (no reset, no answer) must
        not hold a stop, nor the exit of a worker whose claim loop stalled."""
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({claim, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not claim.done():
                await asyncio.wait({claim}, timeout=SHUTDOWN_BOUND)
                await cancel_within([claim], SHUTDOWN_BOUND)
            if claim.done():  # else it is left to the process's exit (``run_worker``)
                with contextlib.suppress(asyncio.CancelledError):
                    await claim
        finally:
            stopping.cancel()

    async def _report_last(self, backend: Backend) -> None:
        """Record the last outcomes and leave the registry, within ``SHUTDOWN_BOUND`` seconds. If
        the engine does not answer, the outcomes not recorded are redelivered once their leases
        run out (at least once, as after a kill -9): better than a stop that never ends."""
        self._decide_returned()
        self._count()
        try:
            async with asyncio.timeout(SHUTDOWN_BOUND):
                await self._reporting.send_rest(backend)  # again and again, until the bound
                with contextlib.suppress(BackendUnavailable):
                    await backend.unregister_worker(self.id)
        except TimeoutError:
            self._reporting.log_unsent()

    async def _register(self, backend: Backend) -> bool:
        """Apply the queue settings and announce this worker; False if stopped first.

        The engine answered ``open``: an outage from here on is waited out, with backoff.
        """
        failures = 0
        while not self._stop.is_set():
            try:
                await self.app.apply_queue_settings(backend)
                await self._refresh_queue_settings()
                await backend.heartbeat(self.info(), {}, time.time())
                for warning in await backend.setup_warnings():
                    log.warning("worker %s: %s", self.id, warning)
                return True
            except BackendUnavailable as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
                log.warning("worker %s: cannot register (%s); retrying in %.1f s", self.id, exc, delay)
                await self._sleep(delay)
        return False

    # -- claiming -------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        backend, pool = self._backend, self._pool
        assert backend is not None and pool is not None
        failures = 0
        drained = False  # the claim that came with the last wake-up found no more work: wait again
        while not self._stop.is_set():
            self._loop_tick = time.monotonic()
            # a thread past its job's time limit (or cancel) runs on: it keeps its slot until it returns
            free = self.concurrency - len(self.running) - pool.overrunning
            if free <= 0:
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # not wait_for: no extra task, wakes a hop sooner
                        await self._slot_free.wait()
                continue
            if self._returned:
                self._decide_returned()
            if self._uncounted_starts or self._uncounted_ends:
                asyncio.get_running_loop().call_soon(self._count)  # runs once the claim is sent
            sent = time.monotonic()
            try:
                leases = [] if drained else await self._report_and_claim(free)
                failures = 0
                self._claim_error = None
            except BackendUnavailable as exc:
                self._claim_error = str(exc) or type(exc).__name__
                failures += 1
                delay = min(5.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
                log.warning("worker %s: claim failed (%s); retrying in %.1f s", self.id, exc, delay)
                await self._sleep(delay)
                continue
            if leases:
                self._start(self._held_still(leases, time.monotonic() - sent))
            drained = False
            if len(leases) < free:
                if self.burst and not leases and not self.running:
                    if not self._reporting.waiting() and not self._returned and not await self._swept_back():
                        self._ran_out = True
                        self.stop()
                    else:
                        await asyncio.sleep(0)  # the flush in flight lands (a SQLite claim never yields)
                    continue
                drained = await self._wait_for_work(free - len(leases))

    async def _report_and_claim(self, free: int) -> list[Lease]:
        """Lease up to ``free`` jobs, applying the outcomes waiting to be sent first.

        The outcomes of the jobs whose slots this claim refills go in the same call, ahead of the
        claim, so a crash from here on redelivers only the jobs then running. (If a flush is on
        its way, they wait for the flush loop.)
        """
        backend = self._backend
        assert backend is not None
        batch = self._reporting.take()
        if not batch:
            return await backend.claim(self.queues, free, self.id, time.time())
        try:
            applied, leases = await backend.finish_and_claim(batch, self.queues, free, self.id, time.time())
        except BaseException:
            self._reporting.send_again(batch)
            raise
        self._reporting.recorded(batch, applied)
        return leases

    async def _swept_back(self) -> bool:
        """Whether a sweep put jobs back to run (a dead worker's expired leases): a burst worker
        finishes them before it stops, as any live worker would put them back."""
        assert self._backend is not None
        try:
            report = await sweep(self._backend)
        except BackendUnavailable:
            return False
        return report.requeued > 0

    async def _wait_for_work(self, free: int) -> bool:
        """Wait (at most 0.25 s) for work and start the jobs the engine leased as it arrived, if
        it can; whether that claim found fewer than ``free`` (then the next step is to wait
        again: whatever a claim in between could find would have woken that wait at once).

        With a thread pool, and an engine that can wait on a blocking client, a pool thread
        waits, and runs the first job it leases itself (``_Wait``).

        Not cut short by ``stop``: a lease taken on the engine's side must reach this worker (a
        stopping worker hands it back at once, ``_start``), so stopping waits out the short wait instead.
        """
        backend = self._backend
        assert backend is not None
        timeout = 0.25 if not self.burst else 0.05
        pool = self._pool
        try:
            if backend.wait_and_claim_blocking is not None and isinstance(pool, ThreadPool):
                future: asyncio.Future[list[Lease] | None] = asyncio.get_running_loop().create_future()
                pool.start([_Wait(self, free, timeout, future)])
                leases = await future  # started by _Wait.finished
            else:
                sent = time.monotonic()
                leases = await backend.wait_and_claim(self.queues, timeout, free, self.id)
                if leases:
                    self._start(self._held_still(leases, time.monotonic() - sent - timeout))
        except BackendUnavailable:
            return False  # the next claim reports it and backs off
        if leases is None:
            return False  # this engine only waits: claim next
        return len(leases) < free

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _held_still(self, leases: list[Lease], late: float) -> list[Lease]:
        """The leases of a claim whose reply came ``late`` seconds after it could have: those it
        may still run. A reply held up past half a lease (an ``async def`` task blocked the loop
        while it was on its way, and no one heartbeated leases this worker did not know of yet)
        may have lost its leases to another worker: its jobs are handed back, not started (the
        hand-back is refused where a lease did pass on), so none runs twice."""
        held = []
        for lease in leases:
            job = lease.job
            if job.lease_expires_at is None or job.started_at is None \
                    or late < (job.lease_expires_at - job.started_at) / 2:
                held.append(lease)
                continue
            log.warning("job %s: its claim's reply came %.1f s late (the event loop was blocked, or the network "
                        "held the reply up); handed back rather than run it after its lease may have passed on",
                        job.id, late)
            self._reporting.add(rules.handed_back(job, lease.token))
        return held

    # -- running --------------------------------------------------------------------------
    def _start(self, leases: list[Lease], started: Running | None = None) -> None:
        """Run the jobs of ``leases``; ``started``: one of them that a pool thread runs already.

        A job whose start raises (a bug; the worker's own steps, not the task's code) fails its
        attempt with that error (``_failed_to_start``); the others start all the same. A stopping
        worker starts none: a claim that returned after the stop began (a wait for work in flight at
        SIGTERM, say) has its leases handed back at once (``_hand_back_unstarted``)."""
        if self._stop.is_set() and not (leases := self._hand_back_unstarted(leases, started)):
            return
        loop = asyncio.get_running_loop()
        pool = self._pool
        calls: list[Running] = []
        now = time.time()
        for lease in leases:
            job = lease.job
            self._leased_off_loop.pop(job.id, None)
            try:
                running = started if started is not None and started.lease is lease \
                    else self._runs_in_thread(loop, lease)
                if running is not None:
                    # the common case, without a coroutine: the pool calls running.finished on the loop
                    self.running[job.id] = running
                    assert running.fn is not None
                    timeout = time_limit(running.fn, lease)
                    if timeout is not None:
                        running.timer = loop.call_later(timeout, self._time_out, running)
                    if running is not started:
                        calls.append(running)
                    continue
                running = self._running(loop, lease, self.app.tasks.get(job.task))
                self.running[job.id] = running
                running.task = asyncio.create_task(self._run(running))
            except Exception as exc:
                self._failed_to_start(lease, exc)
        if calls:
            assert isinstance(pool, ThreadPool)
            try:
                pool.start(calls)
            except Exception as exc:  # a thread could not be started, say: none of them is to run
                for running in calls:
                    running.ctx.request_cancel()  # a thread that takes one after all skips it
                    if running.timer is not None:
                        running.timer.cancel()
                    del self.running[running.lease.job.id]  # no slot to keep: settled as not started
                    self._failed_to_start(running.lease, exc)
                self._slot_free.set()
        # counted later (``_count``), not now: the loop should go idle at once so that the
        # thread just woken gets the GIL
        self._uncounted_starts.append((leases, now))

    def _hand_back_unstarted(self, leases: list[Lease], started: Running | None) -> list[Lease]:
        """Hand back, uncounted, the leases a stopping worker got (SPEC §4: it takes no new jobs);
        the ones kept: ``started``'s alone, whose pool thread began it before the stop did."""
        kept = []
        for lease in leases:
            if started is not None and started.lease is lease:
                kept.append(lease)
                continue
            log.info("job %s: leased as the worker stopped; handed back", lease.job.id)
            self._reporting.add(rules.handed_back(lease.job, lease.token))  # its lease is owed until recorded
            self._leased_off_loop.pop(lease.job.id, None)
        return kept

    def _failed_to_start(self, lease: Lease, exc: Exception) -> None:
        """Settle a job whose start raised in ``_start``: stop what did start of it (its timer, its
        coroutine, its thread) and fail its attempt (``_start_failure``)."""
        outcome = self._start_failure(lease, exc)
        running = self.running.get(lease.job.id)
        if running is not None and running.lease is lease:
            self._abandon(lease.job.id, outcome)
        else:
            self._uncounted_ends.append((lease.job, outcome.status, 0.0))
            self._reporting.add(outcome)

    def _start_failure(self, lease: Lease, exc: Exception) -> Outcome:
        """The outcome of a job that the worker failed to prepare or start (``exc``: a bug, or a
        record it cannot read, such as a parent's result that is not JSON): its attempt fails with
        that error, retried by the usual rules, rather than the job staying ``running`` with
        nothing running it. Said once, with the traceback."""
        job = lease.job
        log.error("job %s (%s) attempt %d: the worker failed to start it; the attempt fails with %s",
                  job.id, job.task, job.attempt, type(exc).__name__, exc_info=exc)
        task = self.app.tasks.get(job.task)
        error = error_info(exc, "".join(traceback.format_exception(exc)))
        return rules.failed_attempt(job, lease.token, error, time.time(), task.options if task else None)

    def _running(self, loop: asyncio.AbstractEventLoop, lease: Lease, fn: Task | None) -> Running:
        return Running(self, lease, Context(lease.job, self._reporter(loop, lease.job.id, lease.token)), fn)

    def _runs_in_thread(self, loop: asyncio.AbstractEventLoop, lease: Lease) -> Running | None:
        """The lease's job as a call of the thread pool: a known sync task without dependencies
        (no coroutine per job); None if it needs one (async, dependencies, unknown, other pools).
        Safe in any thread: nothing is registered yet."""
        fn = self.app.tasks.get(lease.job.task)
        if fn is None or fn.is_async or lease.job.depends_on or not isinstance(self._pool, ThreadPool):
            return None
        return self._running(loop, lease, fn)

    def _reporter(self, loop: asyncio.AbstractEventLoop, job_id: str, token: str) -> Callable[[dict[str, Any]], None]:
        def report(progress: dict[str, Any]) -> None:
            # called from the job's thread or the loop: hand over to the loop, coalesced
            self._reported[job_id, token] = progress
            loop.call_soon_threadsafe(self._queue_progress, job_id, token)

        return report

    def _finished(self, running: Running, result: Any, error: BaseException | None) -> None:
        """A sync job's thread returned (on the loop): free its slot now, decide its outcome soon."""
        if running.timer is not None:
            running.timer.cancel()
        job_id = running.lease.job.id
        if self.running.get(job_id) is not running:
            return  # settled already (time limit, cancel, lease lost, handed back): the result is dropped
        del self.running[job_id]
        self._returned.append((running, result, error))
        self._slot_free.set()  # the claim loop decides them before it claims; else this does, soon
        if not self._deciding:
            self._deciding = True
            asyncio.get_running_loop().call_soon(self._decide_returned)

    def _decide_returned(self) -> None:
        """Decide the outcomes of the sync jobs whose threads returned (one batch per loop tick)."""
        self._deciding = False
        returned, self._returned = self._returned, []
        failure: BaseException | None = None
        for running, result, error in returned:
            assert running.fn is not None
            lease = running.lease
            try:
                outcome = decide(running.fn, lease, running.ctx, result, error, self._max_deliveries_of(lease.job))
            except BaseException as exc:  # not the attempt's to report: decide the rest, then raise it
                failure = failure or exc
                continue
            self._settle(running, outcome)
        if failure is not None:
            raise failure

    def _count(self) -> None:
        """Update the started and finished metrics of the jobs since the last count."""
        starts, self._uncounted_starts = self._uncounted_starts, []
        for leases, now in starts:
            for lease in leases:
                metrics.job_started(lease.job, now)
        ends, self._uncounted_ends = self._uncounted_ends, []
        for job, status, duration in ends:
            metrics.job_finished(job, status, duration)

    def _time_out(self, running: Running) -> None:
        """A sync job's time limit passed: settle it now; its thread's late result is dropped, and
        it keeps its slot until it returns (``ThreadPool.give_up``)."""
        job = running.lease.job
        if self.running.get(job.id) is not running:
            return
        running.ctx.request_cancel()  # a cooperative task stops at its next raise_if_cancelled()
        del self.running[job.id]
        assert running.fn is not None and isinstance(self._pool, ThreadPool)
        self._pool.give_up(running, timed_out=True)  # its slot is kept until the thread returns
        self._slot_free.set()  # (were its thread just done, the slot is free)
        self._settle(
            running, decide(running.fn, running.lease, running.ctx, None, TimeoutError(), self._max_deliveries_of(job))
        )

    def _max_deliveries_of(self, job: Job) -> int:
        return self._max_deliveries.get(job.queue, 10)

    async def _run(self, running: Running) -> None:
        lease = running.lease
        job = lease.job
        if running.fn is not None and running.fn.is_async:
            self._async_ran.add(job.task)
        try:
            if job.depends_on and not await self._read_parent_results(running):
                outcome = rules.handed_back(job, lease.token)
            else:
                assert self._pool is not None
                outcome = await execute(self.app.tasks.get(job.task), lease, running.ctx, self._pool,
                                        self._max_deliveries_of(job))
        except asyncio.CancelledError:
            return  # abandoned (lease lost) or handed back on shutdown: someone else settled it
        except Exception as exc:  # the worker's own steps (the task's errors are its outcome, in execute)
            outcome = self._start_failure(lease, exc)
        finally:
            if self.running.get(job.id) is running:
                del self.running[job.id]
            self._slot_free.set()
        self._settle(running, outcome)

    async def _read_parent_results(self, running: Running) -> bool:
        """Give the job's context its parents' results; False when the engine could not be read
        (the job has not started: it is handed back, to run once the engine answers)."""
        job = running.lease.job
        try:
            parents = await (await self.app.backend()).get_jobs(list(job.depends_on))
        except BackendUnavailable as exc:
            log.warning("worker %s: could not read the results of the parents of job %s (%s); handed it back",
                        self.id, job.id, exc)
            return False
        results = {p.id: p.result for p in parents}
        names = job.metadata.get(PARENT_NAMES) or {}
        running.ctx.parent_results = {**results, **{n: results.get(i) for n, i in names.items()}}
        return True

    def _settle(self, running: Running, outcome: Outcome | None) -> None:
        """Record the first decision about a job; later ones are dropped (the job is fenced)."""
        if running.settled:
            return
        running.settled = True
        reported = self._reported.pop((running.lease.job.id, running.lease.token), None)
        if outcome is not None:
            self._uncounted_ends.append((running.lease.job, outcome.status, time.monotonic() - running.started))
            self._reporting.add(outcome, reported)  # its last progress is sent ahead of it

    def _abandon(self, job_id: str, outcome: Outcome | None) -> None:
        """Stop a job now: cancelled, lease lost, or handed back on shutdown."""
        running = self.running.pop(job_id, None)
        if running is None:
            return
        running.ctx.request_cancel()
        self._settle(running, outcome)
        if running.timer is not None:
            running.timer.cancel()
        if running.task is not None:
            running.task.cancel()  # a coroutine stops; a thread's late result is dropped
        elif isinstance(self._pool, ThreadPool):
            self._pool.give_up(running, timed_out=False)  # the thread keeps its slot until it returns
        if self._pool is not None:
            self._pool.stop(job_id)
        self._slot_free.set()

    def _queue_progress(self, job_id: str, token: str) -> None:
        reported = self._reported.pop((job_id, token), None)
        if reported is None:
            return  # its outcome took it already
        running = self.running.get(job_id)
        # a job that a pool thread leased and started itself reports before the loop registers it
        if (running is not None and running.lease.token == token) or self._leased_off_loop.get(job_id) == token:
            self._reporting.progress(job_id, token, reported)
        elif any(r.lease.job.id == job_id and r.lease.token == token for r, _, _ in self._returned):
            self._reported.setdefault((job_id, token), reported)  # returned, outcome not decided yet: it takes it

    # -- heartbeats and the watchdog ------------------------------------------------------
    async def _watchdog_loop(self) -> None:
        """Exit once the claim loop stalled for ``stall_timeout``. A loop of its own: behind a
        heartbeat that waits on a silent engine (up to 10 s) the stall was noticed that late."""
        while not self._closing:
            slept = time.monotonic()
            await asyncio.sleep(self.heartbeat_interval)
            late = time.monotonic() - slept - self.heartbeat_interval
            if late > 1.0:
                self._loop_tick += late  # the claim loop could not run either: not a stall of its own
            if time.monotonic() - self._loop_tick > self.stall_timeout:
                log.error(
                    "worker %s: the claim loop stalled for %.0f s; exiting so that a supervisor "
                    "restarts it (its leases will be redelivered)",
                    self.id,
                    self.stall_timeout,
                )
                self.exit_code = EXIT_STALLED
                self.hurry()  # its leases are suspect: hand everything back now
                if self._claim_task is not None:
                    self._claim_task.cancel()  # it may be stuck inside a call that never returns
                return

    async def _heartbeat_loop(self) -> None:
        backend = self._backend
        assert backend is not None
        while not self._closing:
            slept = time.monotonic()
            await asyncio.sleep(self.heartbeat_interval)
            self._warn_if_blocked(time.monotonic() - slept - self.heartbeat_interval)
            self._count()  # those not counted during claims (long jobs, an idle worker)
            leases = self.owed_leases()
            try:
                # not wait_for: on 3.11 it can swallow the cancel that ends this loop at shutdown
                async with asyncio.timeout(10.0):
                    reply = await backend.heartbeat(self.info(), leases, time.time())
            except (BackendUnavailable, TimeoutError) as exc:
                self._heartbeat_error = str(exc) or "no answer within 10 s"
                log.warning("worker %s: heartbeat failed (%s)", self.id, self._heartbeat_error)
                continue
            self._heartbeat_error = None
            self._heard(reply, leases)

    def owed_leases(self) -> dict[str, str]:
        """Every lease this worker must keep (job id → token): the jobs running, those whose thread
        returned but whose outcome is not decided yet, those whose outcome is not recorded yet, and
        those a pool thread leased for the loop to start. Safe from another thread (copies first)."""
        leases = {**self._leased_off_loop, **self._reporting.owed()}
        for running, _, _ in list(self._returned):
            leases[running.lease.job.id] = running.lease.token
        for job_id, running in list(self.running.items()):
            leases[job_id] = running.lease.token
        return leases

    def _heard(self, reply: HeartbeatReply, leases: dict[str, str]) -> None:
        """Act on a heartbeat's reply about ``leases``: abandon the jobs whose lease was lost or
        whose cancel was asked for (not one that finished, or ran again, since it was sent)."""
        for job_id in reply.lost:
            running = self.running.get(job_id)
            if running is not None and running.lease.token == leases.get(job_id):
                log.warning("job %s: lease lost to another worker; abandoning it", job_id)
                self._abandon(job_id, None)
        for job_id in reply.cancel_requested:
            running = self.running.get(job_id)
            if running is not None and running.lease.token == leases.get(job_id):
                self._abandon(job_id, rules.cancelled(running.lease.job, running.lease.token))

    def _warn_if_blocked(self, late: float) -> None:
        """Say so when something blocked the event loop: heartbeats ride on it, so an ``async def``
        task calling blocking code (``time.sleep``, ``requests``) for longer than the visibility
        timeout has its jobs' leases expire and them run again elsewhere."""
        running = {r.lease.job.task for r in self.running.values() if r.fn is not None and r.fn.is_async}
        tasks, self._async_ran = sorted(self._async_ran | running), set()
        if late < BLOCKED_WARNING:
            return
        log.warning("worker %s: the event loop was blocked for %.1f s (heartbeats were late: past the "
                    "visibility timeout leases expire); async tasks that ran meanwhile: %s. Blocking code in an async "
                    "task belongs in asyncio.to_thread() or a sync task", self.id, late, ", ".join(tasks) or "none")

    # -- shutdown -------------------------------------------------------------------------
    async def _drain(self) -> None:
        """Give the running jobs ``grace`` seconds, then hand back the rest; ``hurry`` cuts it short."""
        started = time.monotonic()
        while self.running and (left := started + self.grace - time.monotonic()) > 0:
            self._slot_free.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_free.wait(), left)
        why = f"not finished within the {self.grace:g} s grace" if self.grace else "stopping at once"
        for job_id, running in list(self.running.items()):
            log.info("job %s: %s; handed back", job_id, why)
            self._abandon(job_id, rules.handed_back(running.lease.job, running.lease.token))

    def hurry(self) -> None:
        """Stop now: the running jobs are handed back, even while the grace is running out."""
        self.grace = 0
        self.stop()
        self._slot_free.set()  # a drain waiting out the grace looks again

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        if self._stop.is_set():  # a second signal: hand everything back now
            self.hurry()
        else:
            self.stop()

    def _make_pool(self) -> Pool:
        if self.pool_kind == "process":
            from conveyor.worker.process_pool import ProcessPool

            assert self.app_spec is not None
            return ProcessPool(self.concurrency, self.app_spec, max_tasks=self.max_tasks_per_child,
                               max_memory=self.max_memory_per_child, on_broken=self._pool_broken)
        return ThreadPool(self.concurrency, on_returned=self._slot_free.set)

    def _pool_broken(self, reason: str) -> None:
        """No process of the pool can load the app: hand the jobs back and exit non-zero, rather
        than hold leases on jobs nothing here can run (a supervisor restarts the worker)."""
        log.error("worker %s: the process pool cannot load the app (%s); stopping, its jobs handed back",
                  self.id, reason)
        self.exit_code = EXIT_STALLED
        self.hurry()

    async def _refresh_queue_settings(self) -> None:
        assert self._backend is not None
        for name in self.queues:
            self._max_deliveries[name] = (await self._backend.queue_settings(name)).max_deliveries


__all__ = ["EXIT_STALLED", "Worker"]
