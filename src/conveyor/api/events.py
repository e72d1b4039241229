"""Server-Sent Events for one job, fed by ONE shared change watcher per server process.

The watcher polls ``backend.revisions(watched ids)`` every ``interval`` seconds (one query
for all subscribers), fetches only the jobs whose revision moved (one ``get_jobs``), and
fans the new state out to every subscriber of those jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from conveyor.backends.base import Backend
from conveyor.core.errors import BackendUnavailable
from conveyor.core.job import Job
from conveyor.serialization import dumps

log = logging.getLogger(__name__)

#: Seconds between two keep-alive comments on an idle stream.
KEEPALIVE = 15.0


class Subscription:
    """One stream's view of one job: the newest states, in order, as the watcher sees them."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[Job] = asyncio.Queue()


class Watcher:
    """Polls the revisions of every watched job and hands changed jobs to their subscribers."""

    def __init__(self, backend: Callable[[], Awaitable[Backend]], interval: float = 0.05) -> None:
        self._backend = backend
        self.interval = interval
        self._subs: dict[str, set[Subscription]] = {}
        self._latest: dict[str, Job] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: Polls made (tests check there is one per tick, whatever the number of clients).
        self.polls = 0

    def subscribe(self, job: Job) -> Subscription:
        """Watch ``job`` (as just read); a newer state already known is queued at once."""
        sub = Subscription(job.id)
        known = self._latest.get(job.id)
        if known is not None and known.revision > job.revision:
            sub.queue.put_nowait(known)
        elif known is None or known.revision < job.revision:
            # ``_latest`` is what every subscriber has been handed: a newer state read by this
            # one goes to the others too, or ``poll`` would see no change and they would never
            # get it (a stream that misses its terminal event never ends).
            self._publish(job)
        self._subs.setdefault(job.id, set()).add(sub)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="conveyor-sse-watcher")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.job_id]
                self._latest.pop(sub.job_id, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = self.interval
        while True:
            if not self._subs:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self.poll()
                delay = self.interval
            except BackendUnavailable as exc:
                delay = min(2.0, delay * 2)
                log.warning("event watcher: %s", exc)
            except Exception:
                delay = min(2.0, delay * 2)
                log.exception("event watcher failed")
            await asyncio.sleep(delay)

    async def poll(self) -> None:
        """One tick: one revisions query, one fetch of the jobs that changed, fan-out."""
        ids = list(self._subs)
        if not ids:
            return
        backend = await self._backend()
        self.polls += 1
        revisions = await backend.revisions(ids)
        changed = [i for i in ids if i in revisions and i in self._latest and revisions[i] > self._latest[i].revision]
        if not changed:
            return
        for job in await backend.get_jobs(changed):
            known = self._latest.get(job.id)
            if known is not None and job.revision > known.revision:
                self._publish(job)

    def _publish(self, job: Job) -> None:
        """Hand ``job`` to every subscriber of it and remember it as the newest state they have."""
        self._latest[job.id] = job
        for sub in self._subs.get(job.id, ()):
            sub.queue.put_nowait(job)


def frame(job: Job) -> str:
    """One SSE event: ``event: job``, ``id: <revision>``, ``data: <job json>``."""
    return f"event: job\nid: {job.revision}\ndata: {dumps(job.to_json())}\n\n"


async def stream(
    watcher: Watcher, job: Job, last_event_id: int | None, keepalive: float = KEEPALIVE
) -> AsyncIterator[str]:
    """The event stream of ``job`` from after ``last_event_id``; ends after a terminal status."""
    sub = watcher.subscribe(job)
    try:
        yield "retry: 3000\n\n"
        last = last_event_id if last_event_id is not None else 0
        if job.revision > last:
            yield frame(job)
            last = job.revision
        current = job
        while not current.status.terminal:
            try:
                current = await asyncio.wait_for(sub.queue.get(), keepalive)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if current.revision > last:
                yield frame(current)
                last = current.revision
    finally:
        watcher.unsubscribe(sub)
