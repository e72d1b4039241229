"""The worker's housekeeping, beside its jobs: sweeps (expired leases put back, retention, old
records), a refresh of the queue settings, and webhook delivery, each in a loop that turns about
once a second and logs its failures while it goes on (``Step``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator

from conveyor.backends.base import Backend, SweepReport
from conveyor.core.errors import BackendUnavailable
from conveyor.worker.stopping import SHUTDOWN_BOUND, cancel_within

log = logging.getLogger(__name__)

#: Seconds a ``--burst`` worker gives the webhooks its jobs owe before it exits (one attempt each).
LAST_WEBHOOKS_BOUND = 30.0


class Step:
    """A background step repeated about once a second, whose failures are logged while its loop
    goes on: a bug with its traceback; an outage in one line when it starts and one when the step
    works again (the claim loop reports outages as they last)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down = False

    @contextlib.contextmanager
    def logged(self) -> Iterator[None]:
        try:
            yield
        except BackendUnavailable as exc:
            if not self.down:
                log.warning("%s failed: %s (said once until it works again)", self.name, exc)
            self.down = True
            return
        except Exception:
            log.exception("%s failed", self.name)
            return
        if self.down:
            self.down = False
            log.info("%s works again", self.name)


async def sweep(backend: Backend) -> SweepReport:
    """Sweep once (``Backend.sweep``), and say what it did."""
    report = await backend.sweep(time.time())
    if report.total:
        log.info("housekeeping: %s", report)
    return report


class Housekeeping:
    """A worker's housekeeping loop and webhook loop; ``close`` ends each at its next turn, but
    for the webhooks of a ``--burst`` worker, which ``end_webhooks`` ends."""

    def __init__(self, backend: Backend, worker_id: str, *, burst: bool,
                 refresh_queue_settings: Callable[[], Awaitable[None]]) -> None:
        self._backend = backend
        self._worker_id = worker_id  #: for the logs
        self._burst = burst
        self._refresh_queue_settings = refresh_queue_settings
        #: Set at shutdown: each loop also ends at its next turn, so that a cancel swallowed below
        #: it (a race in asyncio or a client library) cannot hang the stop.
        self._closing = False
        #: Set when a ``--burst`` worker is done: its webhook loop sends what is due, then ends.
        self._last_webhooks = asyncio.Event()

    def close(self) -> None:
        self._closing = True

    async def sweep_loop(self) -> None:
        sweeping, refreshing = Step("housekeeping"), Step("refreshing queue settings")
        while not self._closing:
            await asyncio.sleep(random.uniform(0.5, 1.0))  # jitter: workers don't sweep in lockstep
            with sweeping.logged():
                await sweep(self._backend)
            with refreshing.logged():
                await self._refresh_queue_settings()

    async def webhook_loop(self) -> None:
        """Send due webhooks; a loop of its own, so that slow endpoints (up to 15 s an attempt)
        never hold up the sweep that puts a dead worker's jobs back."""
        from conveyor.webhooks import Sender

        sender = Sender(self._backend)
        delivering = Step("webhook delivery")
        try:
            # a burst worker's loop runs on through the shutdown, until ``end_webhooks`` says
            while not self._last_webhooks.is_set() and (self._burst or not self._closing):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(random.uniform(0.5, 1.0)):
                        await self._last_webhooks.wait()
                with delivering.logged():
                    await sender.poll(time.time())
            if self._last_webhooks.is_set():
                with delivering.logged():
                    await sender.settle(time.time())
        finally:
            await sender.aclose()

    async def end_webhooks(self, loop: asyncio.Task[None], *, send_owed: bool) -> None:
        """Stop the webhook ``loop``. With ``send_owed`` (a ``--burst`` worker that ran out of
        work, not one stopped by a signal) it first sends what the worker's jobs owe (their last
        outcomes are recorded by now), one attempt each, within ``LAST_WEBHOOKS_BOUND``: such a
        worker often runs alone, from cron, and nothing else would send them until another worker
        starts. A failed attempt is the next worker's."""
        if send_owed and not loop.done():
            self._last_webhooks.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAST_WEBHOOKS_BOUND):
                    await asyncio.shield(loop)
            if not loop.done():
                log.warning("worker %s: webhooks still being sent after %g s are left to the next worker",
                            self._worker_id, LAST_WEBHOOKS_BOUND)
        await cancel_within([loop], SHUTDOWN_BOUND)


__all__ = ["LAST_WEBHOOKS_BOUND", "Housekeeping", "Step", "sweep"]
