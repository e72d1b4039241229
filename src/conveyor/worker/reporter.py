"""The worker's reporter: it sends the outcomes and progress of the worker's jobs to the engine.

Outcomes go in batches: with the worker's next claim (``take``, then ``recorded`` or
``send_again``), or from the flush loop (``flush_loop``), one batch on its way at a time.
The rules it keeps:

- A job's progress never overtakes its outcome, nor lags behind it: the flush takes both together
  and sends the progress first, and an outcome whose job has progress waiting is left to the flush.
- A batch whose send failed goes out again, ahead of later ones. The engine may have applied it
  (its reply lost with the connection), so a resent outcome's refusal is said at INFO, not as a
  lost lease.
- A write on its way is never cut, not even by the worker's stop: its batch would be sent again.
- The lease of an outcome not recorded yet is still owed its heartbeats (``owed``, from any thread).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import Backend, Outcome
from conveyor.core.errors import BackendUnavailable

log = logging.getLogger(__name__)


class Reporter:
    """The outcomes and progress a worker has yet to record, and their sending."""

    def __init__(self, worker_id: str) -> None:
        self._worker_id = worker_id  #: for the logs
        self._outcomes: list[Outcome] = []
        #: progress to send (job id → token, value), sent ahead of the outcomes
        self._progress: dict[str, tuple[str, dict[str, Any]]] = {}
        #: Leases whose outcome is not recorded yet (job id → token): their heartbeats are still owed.
        #: Each change is one dict operation, safe to copy from any thread.
        self._unrecorded: dict[str, str] = {}
        #: Outcomes sent again because a send failed (job id, token): the engine may have applied
        #: the first (the reply was lost with the connection), so a refusal is no sign of a lost lease.
        self._resent: set[tuple[str, str]] = set()
        self._flushing: asyncio.Future[None] | None = None
        self._flush_needed = asyncio.Event()
        self._closing = False
        self._failure: BaseException | None = None  #: the last failed send at shutdown (``send_rest``)

    def add(self, outcome: Outcome, last_progress: dict[str, Any] | None = None) -> None:
        """Send ``outcome``, after the job's ``last_progress`` (reported but not sent yet); its
        lease is owed until the engine records it."""
        if last_progress is not None:
            self._progress[outcome.job_id] = (outcome.token, last_progress)
        self._unrecorded[outcome.job_id] = outcome.token
        self._outcomes.append(outcome)
        self._flush_needed.set()

    def progress(self, job_id: str, token: str, value: dict[str, Any]) -> None:
        """Send a running job's progress (the latest replaces one not sent yet)."""
        self._progress[job_id] = (token, value)
        self._flush_needed.set()

    def waiting(self) -> int:
        """How many outcomes wait to be sent (not counting a batch on its way)."""
        return len(self._outcomes)

    def owed(self) -> dict[str, str]:
        """The leases of the outcomes not recorded yet (job id → token). Safe from any thread (a copy)."""
        return self._unrecorded.copy()

    # -- with the next claim --------------------------------------------------------------
    def take(self) -> list[Outcome]:
        """The outcomes to send with the worker's next claim; the caller then says ``recorded`` or
        ``send_again``. Empty if the flush loop is to send them: a batch is on its way already, or
        progress must go first."""
        # a job's last progress must land before its outcome ends the lease: the flush sends both, in order
        progress_first = any(o.job_id in self._progress for o in self._outcomes)
        if progress_first:
            self._flush_needed.set()
        if progress_first or self._in_flight():
            return []
        batch, self._outcomes = self._outcomes, []
        return batch

    def send_again(self, batch: list[Outcome]) -> None:
        """``batch``'s send failed: not known to be applied, it goes out again with the next."""
        self._outcomes[:0] = batch
        self._resent.update((o.job_id, o.token) for o in batch)
        self._flush_needed.set()

    def recorded(self, batch: Sequence[Outcome], applied: Sequence[bool]) -> None:
        """The engine answered for ``batch``: their leases are done with; say which it refused."""
        for outcome, ok in zip(batch, applied, strict=True):
            if self._unrecorded.get(outcome.job_id) == outcome.token:
                del self._unrecorded[outcome.job_id]
            resent = (outcome.job_id, outcome.token) in self._resent
            self._resent.discard((outcome.job_id, outcome.token))
            if ok:
                continue
            if resent:  # the engine may well have applied the first send, its reply lost in the cut
                log.info("job %s: outcome %s sent again after a failed send was refused: either the first "
                         "send was applied, or the lease had passed to another worker", outcome.job_id, outcome.status)
            else:
                log.warning(
                    "job %s: outcome %s refused: the lease had passed to another worker", outcome.job_id, outcome.status
                )

    # -- the flush loop -------------------------------------------------------------------
    async def flush_loop(self, backend: Backend) -> None:
        """Send what is added, in batches, until ``close``; an outage is retried every 0.5 s."""
        while not self._closing:
            await self._flush_needed.wait()
            self._flush_needed.clear()
            await asyncio.sleep(0)  # let the jobs finishing in this tick join the batch
            flushing = self._kick_flush(backend) or self._flushing
            if flushing is None or flushing.done():
                continue
            try:
                # shielded: stopping the worker must not cut a write whose batch it would then resend
                await asyncio.shield(flushing)
            except BackendUnavailable as exc:
                log.warning("worker %s: could not record outcomes (%s); retrying", self._worker_id, exc)
                await asyncio.sleep(0.5)
                self._flush_needed.set()
            except Exception:  # a bug, not the engine: keep reporting (this loop is every job's way out)
                log.exception("worker %s: could not record outcomes; retrying", self._worker_id)
                await asyncio.sleep(0.5)
                self._flush_needed.set()

    def close(self) -> None:
        """End the flush loop at its next turn (the worker stops: ``send_rest`` sends the rest)."""
        self._closing = True
        self._flush_needed.set()

    def _in_flight(self) -> bool:
        return self._flushing is not None and not self._flushing.done()

    def _kick_flush(self, backend: Backend) -> asyncio.Future[None] | None:
        """Start sending the outcomes and progress now, unless a batch is on its way already
        (then the flush loop sends them after it); the flush started, if any."""
        if not (self._outcomes or self._progress) or self._in_flight():
            return None
        flushing = self._flushing = asyncio.ensure_future(self._flush(backend))
        flushing.add_done_callback(self._flushed)
        return flushing

    def _flushed(self, flushing: asyncio.Future[None]) -> None:
        if not flushing.cancelled() and flushing.exception() is not None:
            self._flush_needed.set()  # the flush loop retries (and reports) it

    async def _flush(self, backend: Backend) -> None:
        # taken together: a job's outcome never leaves ahead of progress it reported before it
        progress, self._progress = self._progress, {}
        batch, self._outcomes = self._outcomes, []
        try:
            for job_id, (token, value) in progress.items():
                try:
                    await backend.set_progress(job_id, token, value, time.time())
                except BackendUnavailable:
                    raise
                except Exception:  # this report only: the job's outcome and the others' go on
                    log.exception("job %s: progress could not be recorded", job_id)
            if not batch:
                return
            applied = await backend.finish(batch, time.time())
        except BaseException:
            self.send_again(batch)
            self._progress = {**progress, **self._progress}  # again with it, unless newer came meanwhile
            raise
        self.recorded(batch, applied)

    # -- at shutdown ----------------------------------------------------------------------
    async def send_rest(self, backend: Backend) -> None:
        """Send what is left as the worker stops, once the batch on its way has landed (not cut:
        see ``flush_loop``). A failed write is sent again (with backoff) until the caller's bound:
        an outage that ends within it, as a refused connection does at once, must not cost the
        finished jobs a second run."""
        if self._flushing is not None:
            await asyncio.wait([self._flushing])
        delay = 0.1
        while True:
            try:
                await self._flush(backend)
                return
            except BackendUnavailable as exc:
                self._failure = exc
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    def log_unsent(self) -> None:
        """Say what ``send_rest`` could not send within its bound: those jobs run again."""
        if self._outcomes:
            log.error("worker %s: could not record %d outcomes at shutdown (%s); their jobs are redelivered "
                      "once their leases run out", self._worker_id, len(self._outcomes), self._failure or "no answer")


__all__ = ["Reporter"]
