"""The lease keeper: a thread that heartbeats for a worker whose event loop is blocked.

Heartbeats ride on the worker's event loop. An ``async def`` task that blocks it (``time.sleep``,
a CPU-bound loop, a blocking client) would stop them: past the visibility timeout its lease
expires, another worker runs the job again, and a job that always blocks that long is run
again and again until ``max_deliveries`` fails it. The keeper watches the loop from a thread;
while the loop is late it sends the heartbeats itself, on a connection of its own (opened the
first time it is needed), and hands the engine's answer (lost leases, cancels) to the loop.

A job past its time limit is not kept: were the loop blocked for good, its lease runs out and
the engine puts it back, as for a dead worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from conveyor.backends.base import Backend, HeartbeatReply
from conveyor.worker.execute import time_limit

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

log = logging.getLogger(__name__)

#: The keeper steps in once the loop has not run for a heartbeat interval; it looks (and the loop
#: shows it is alive) four times an interval: from a last heartbeat to the keeper's first, at most
#: about 2.5 intervals pass (1.25 s by default), well inside the shortest visibility timeout that
#: heartbeats every 0.5 s allow.
LOOKS_PER_INTERVAL = 4


class LeaseKeeper:
    """Sends ``worker``'s heartbeats from a thread while its event loop does not."""

    def __init__(
        self, worker: Worker, twin: Backend, heard: Callable[[HeartbeatReply, dict[str, str]], None]
    ) -> None:
        """``twin``: an unopened backend of the worker's engine (``Backend.twin``), opened the
        first time the keeper steps in."""
        self._worker = worker
        self._twin = twin
        self._heard = heard
        self._loop = asyncio.get_running_loop()  #: the worker's
        self._interval = worker.heartbeat_interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="conveyor-lease-keeper", daemon=True)
        #: When the worker's loop last ran a tick of ours (``time.monotonic()``).
        self.alive = time.monotonic()
        self._ticker: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._tick()
        self._thread.start()

    def stop(self) -> None:  # on the loop
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.cancel()

    def join(self) -> None:
        """Wait for the thread to close its connection and end (blocks: call it off the loop)."""
        self._thread.join(timeout=5.0)

    def _tick(self) -> None:  # on the loop
        self.alive = time.monotonic()
        self._ticker = self._loop.call_later(self._interval / LOOKS_PER_INTERVAL, self._tick)

    def _keep(self) -> None:  # the thread
        asyncio.run(self._keep_leases())

    async def _keep_leases(self) -> None:
        """The thread's own loop: it runs all along, as an engine's client may need (the SQLite
        backend commits on a timer of its loop)."""
        interval = self._interval
        opened = False
        stepped_in = False
        try:
            while not self._stopped.is_set():
                await asyncio.sleep(interval / LOOKS_PER_INTERVAL)
                if time.monotonic() - self.alive < interval:
                    stepped_in = False
                    continue
                leases = self._leases()
                if not leases:
                    continue
                if not stepped_in:
                    stepped_in = True
                    log.warning("worker %s: the event loop is blocked; keeping the leases of %s from a thread",
                                self._worker.id, ", ".join(leases))
                opened = True
                await self._send(leases)
        finally:
            if opened:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._twin.close(), 5.0)

    def _leases(self) -> dict[str, str]:
        """The leases to keep (job id → token): the worker's owed leases, but a job past its
        time limit."""
        now = time.monotonic()
        leases = self._worker.owed_leases()
        for job_id, running in list(self._worker.running.items()):
            limit = time_limit(running.fn, running.lease) if running.fn is not None else running.lease.job.timeout
            if limit is not None and now - running.started >= limit:
                leases.pop(job_id, None)
        return leases

    async def _send(self, leases: dict[str, str]) -> None:
        try:
            async with asyncio.timeout(10.0):
                await self._twin.open()
                reply = await self._twin.heartbeat(self._worker.info(), leases, time.time())
        except Exception as exc:  # whatever it is (the engine, a bug): the next turn tries again
            log.warning("worker %s: heartbeat from the lease keeper failed (%s)", self._worker.id, exc)
            return
        if reply.lost or reply.cancel_requested:
            self._loop.call_soon_threadsafe(self._heard, reply, leases)
