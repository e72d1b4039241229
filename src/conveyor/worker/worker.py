"""The worker: lease one job per free slot, run it, report, and keep the system healthy.

Concurrency lives in one event loop: a claim loop (claims only for free slots; no hidden
prefetch), a flush loop (writes outcomes and progress in batches), a heartbeat loop
(extends leases, learns of cancels and lost leases, watches the claim loop for stalls) and
a housekeeping loop (sweeps expired leases, retention and old records; sends webhooks).
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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor import metrics
from conveyor.backends import create_backend
from conveyor.backends.base import Backend, Lease, Outcome, WorkerInfo
from conveyor.core import rules
from conveyor.core.app import PARENT_NAMES, Conveyor
from conveyor.core.context import Context
from conveyor.core.errors import BackendUnavailable, ConfigurationError
from conveyor.scheduler import run_scheduler
from conveyor.worker.execute import execute
from conveyor.worker.pools import Pool, ThreadPool

log = logging.getLogger(__name__)

#: Exit code of a worker whose claim loop stalled (a supervisor should restart it).
EXIT_STALLED = 70


@dataclass
class Running:
    """A job this worker holds a lease on."""

    lease: Lease
    ctx: Context
    task: asyncio.Task[None] | None = None
    #: Set once an outcome was decided (or the job abandoned): later outcomes are dropped.
    settled: bool = False
    started: float = field(default_factory=time.monotonic)


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
        heartbeat: float = 0.5,
        stall_timeout: float = 60.0,
        backend: Backend | None = None,
    ) -> None:
        if pool not in ("thread", "process", "async"):
            raise ConfigurationError(f"unknown pool {pool!r}: use thread, process or async")
        if pool == "process" and app_spec is None:
            raise ConfigurationError("the process pool needs the app as 'module:attribute' (--app)")
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
        self.heartbeat_interval = heartbeat
        self.stall_timeout = stall_timeout
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started_at = time.time()
        self.running: dict[str, Running] = {}
        self.exit_code = 0
        self._outbox: list[Outcome] = []
        self._progress: dict[str, tuple[str, dict[str, Any]]] = {}
        self._stop = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._flush_needed = asyncio.Event()
        self._loop_tick = time.monotonic()
        self._backend: Backend | None = backend  #: opened by ``run`` unless given
        self._claim_task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Future[None] | None = None
        self._pool: Pool | None = None
        self._max_deliveries: dict[str, int] = {}

    # -- public ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop taking jobs; running ones get ``grace`` seconds to finish."""
        if not self._stop.is_set():
            log.info("worker %s stopping: no new jobs, %d running", self.id, len(self.running))
        self._stop.set()

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
        await backend.open()
        self.app.bind(backend)
        try:
            await self.app.apply_queue_settings(backend)
            await self._refresh_queue_settings()
            self._pool = self._make_pool()
            self._install_signals()
            await backend.heartbeat(self.info(), {}, time.time())
            log.info(
                "worker %s ready: queues %s, concurrency %d, %s pool",
                self.id,
                ",".join(self.queues),
                self.concurrency,
                self.pool_kind,
            )
            helpers = [
                asyncio.create_task(c) for c in (self._flush_loop(), self._heartbeat_loop(), self._housekeeping_loop())
            ]
            if self.scheduler:
                helpers.append(asyncio.create_task(run_scheduler(self.app, self._stop)))
            try:
                self._claim_task = asyncio.create_task(self._claim_loop())
                with contextlib.suppress(asyncio.CancelledError):
                    await self._claim_task
                await self._drain()
            finally:
                for t in helpers:
                    t.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                if self._flushing is not None:
                    await asyncio.wait([self._flushing])
                await self._flush()
                with contextlib.suppress(BackendUnavailable):
                    await backend.unregister_worker(self.id)
        finally:
            if self._pool is not None:
                await self._pool.close()
            await backend.close()
        return self.exit_code

    # -- claiming -------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        backend = self._backend
        assert backend is not None
        failures = 0
        while not self._stop.is_set():
            self._loop_tick = time.monotonic()
            free = self.concurrency - len(self.running)
            if free <= 0:
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_free.wait(), 1.0)
                continue
            try:
                leases = await backend.claim(self.queues, free, self.id, time.time())
                failures = 0
            except BackendUnavailable as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
                log.warning("worker %s: claim failed (%s); retrying in %.1f s", self.id, exc, delay)
                await self._sleep(delay)
                continue
            for lease in leases:
                self._start(lease)
            if len(leases) < free:
                if self.burst and not leases and not self.running:
                    if not self._outbox:
                        self.stop()
                    continue
                await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        backend = self._backend
        assert backend is not None
        waiter = asyncio.ensure_future(backend.wait_for_work(self.queues, 0.25 if not self.burst else 0.05))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (waiter, stopper):
                f.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendUnavailable):
                await waiter

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- running --------------------------------------------------------------------------
    def _start(self, lease: Lease) -> None:
        job = lease.job
        loop = asyncio.get_running_loop()

        def report(progress: dict[str, Any]) -> None:
            # called from the job's thread or the loop: hand over to the loop, coalesced
            loop.call_soon_threadsafe(self._queue_progress, job.id, lease.token, progress)

        running = Running(lease, Context(job, report))
        self.running[job.id] = running
        metrics.job_started(job, time.time())
        running.task = asyncio.create_task(self._run(running))

    async def _run(self, running: Running) -> None:
        lease = running.lease
        job = lease.job
        try:
            if job.depends_on:
                parents = await self.app.backend()
                results = {p.id: p.result for p in await parents.get_jobs(list(job.depends_on))}
                names = job.metadata.get(PARENT_NAMES) or {}
                running.ctx.parent_results = {**results, **{n: results.get(i) for n, i in names.items()}}
            assert self._pool is not None
            outcome = await execute(
                self.app.tasks.get(job.task), lease, running.ctx, self._pool, self._max_deliveries.get(job.queue, 10)
            )
        except asyncio.CancelledError:
            return  # abandoned (lease lost) or handed back on shutdown: someone else settled it
        finally:
            if self.running.get(job.id) is running:
                del self.running[job.id]
            self._slot_free.set()
        self._settle(running, outcome)

    def _settle(self, running: Running, outcome: Outcome | None) -> None:
        """Record the first decision about a job; later ones are dropped (the job is fenced)."""
        if running.settled:
            return
        running.settled = True
        if outcome is not None:
            metrics.job_finished(running.lease.job, outcome.status, time.monotonic() - running.started)
            self._outbox.append(outcome)
            self._flush_needed.set()

    def _abandon(self, job_id: str, outcome: Outcome | None) -> None:
        """Stop a job now: cancelled, lease lost, or handed back on shutdown."""
        running = self.running.pop(job_id, None)
        if running is None:
            return
        running.ctx.request_cancel()
        self._settle(running, outcome)
        if running.task is not None:
            running.task.cancel()  # a coroutine stops; a thread's late result is dropped
        if self._pool is not None:
            self._pool.stop(job_id)
        self._slot_free.set()

    def _queue_progress(self, job_id: str, token: str, progress: dict[str, Any]) -> None:
        if job_id in self.running:
            self._progress[job_id] = (token, progress)
            self._flush_needed.set()

    # -- reporting ------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await self._flush_needed.wait()
            self._flush_needed.clear()
            await asyncio.sleep(0)  # let the jobs finishing in this tick join the batch
            try:
                # shielded: stopping the worker must not cut a write whose batch it would then resend
                self._flushing = asyncio.ensure_future(self._flush())
                await asyncio.shield(self._flushing)
            except BackendUnavailable as exc:
                log.warning("worker %s: could not record outcomes (%s); retrying", self.id, exc)
                await asyncio.sleep(0.5)
                self._flush_needed.set()

    async def _flush(self) -> None:
        backend = self._backend
        assert backend is not None
        progress, self._progress = self._progress, {}
        for job_id, (token, value) in progress.items():
            await backend.set_progress(job_id, token, value, time.time())
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        try:
            applied = await backend.finish(batch, time.time())
        except BaseException:
            self._outbox[:0] = batch
            raise
        for outcome, ok in zip(batch, applied, strict=True):
            if not ok:
                log.warning(
                    "job %s: outcome %s refused: the lease had passed to another worker", outcome.job_id, outcome.status
                )

    # -- heartbeats and housekeeping ------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        backend = self._backend
        assert backend is not None
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if time.monotonic() - self._loop_tick > self.stall_timeout:
                log.error(
                    "worker %s: the claim loop stalled for %.0f s; exiting so that a supervisor "
                    "restarts it (its leases will be redelivered)",
                    self.id,
                    self.stall_timeout,
                )
                self.exit_code = EXIT_STALLED
                self.grace = 0  # its leases are suspect: hand everything back now
                self.stop()
                if self._claim_task is not None:
                    self._claim_task.cancel()  # it may be stuck inside a call that never returns
                return
            leases = {job_id: r.lease.token for job_id, r in self.running.items()}
            try:
                reply = await asyncio.wait_for(backend.heartbeat(self.info(), leases, time.time()), 10.0)
            except (BackendUnavailable, TimeoutError) as exc:
                log.warning("worker %s: heartbeat failed (%s)", self.id, exc)
                continue
            for job_id in reply.lost:
                if job_id in self.running:  # not one that finished while the heartbeat was in flight
                    log.warning("job %s: lease lost to another worker; abandoning it", job_id)
                    self._abandon(job_id, None)
            for job_id in reply.cancel_requested:
                running = self.running.get(job_id)
                if running is not None:
                    self._abandon(job_id, rules.cancelled(running.lease.job, running.lease.token))

    async def _housekeeping_loop(self) -> None:
        backend = self._backend
        assert backend is not None
        from conveyor.webhooks import deliver_due

        while True:
            await asyncio.sleep(random.uniform(0.5, 1.0))  # jitter: workers don't sweep in lockstep
            try:
                report = await backend.sweep(time.time())
                if report.total:
                    log.info("housekeeping: %s", report)
                await deliver_due(backend, time.time())
                await self._refresh_queue_settings()
            except BackendUnavailable as exc:
                log.warning("housekeeping failed: %s", exc)
            except Exception:
                log.exception("housekeeping failed")

    # -- shutdown -------------------------------------------------------------------------
    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while self.running and time.monotonic() < deadline:
            self._slot_free.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_free.wait(), max(0.0, deadline - time.monotonic()))
        for job_id, running in list(self.running.items()):
            log.info("job %s: not finished within the %.0f s grace; handed back", job_id, self.grace)
            self._abandon(job_id, rules.handed_back(running.lease.job, running.lease.token))

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        if self._stop.is_set():  # a second signal: hand everything back now
            self.grace = 0
        self.stop()

    def _make_pool(self) -> Pool:
        if self.pool_kind == "process":
            from conveyor.worker.process_pool import ProcessPool

            assert self.app_spec is not None
            return ProcessPool(self.concurrency, self.app_spec)
        return ThreadPool(self.concurrency)

    async def _refresh_queue_settings(self) -> None:
        assert self._backend is not None
        for name in self.queues:
            self._max_deliveries[name] = (await self._backend.queue_settings(name)).max_deliveries


def run_worker(app: Conveyor, **options: Any) -> int:
    """Run a worker in this process until it stops; its exit code."""
    return asyncio.run(Worker(app, **options).run())


__all__ = ["EXIT_STALLED", "Worker", "run_worker"]
