"""A client-side handle on one job: read, refresh, cancel, wait."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conveyor.core.errors import JobFailed, JobNotFound, ValidationError
from conveyor.core.job import Job, Status

if TYPE_CHECKING:
    from conveyor.core.app import Conveyor


class JobHandle:
    """What ``enqueue`` returns; a snapshot of the job that ``refresh`` brings up to date."""

    def __init__(self, app: Conveyor, job: Job, created: bool = True) -> None:
        self.app = app
        self.job = job
        #: False when an idempotency key matched an existing job.
        self.created = created

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.job.task} {self.status}>"

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def status(self) -> Status:
        return self.job.status

    @property
    def progress(self) -> Mapping[str, Any] | None:
        return self.job.progress

    @property
    def result(self) -> Any:
        return self.job.result

    @property
    def error(self) -> Mapping[str, Any] | None:
        return self.job.error

    def refresh(self) -> JobHandle:
        """Reload the job from the backend."""
        return self.app.portal.call(self.refresh_async())

    async def refresh_async(self) -> JobHandle:
        jobs = await (await self.app.backend()).get_jobs([self.id])
        if not jobs:
            raise JobNotFound(f"job {self.id} no longer exists")
        self.job = jobs[0]
        return self

    def cancel(self) -> JobHandle:
        """Cancel: a pending job at once; a running one cooperatively."""
        return self.app.portal.call(self.cancel_async())

    async def cancel_async(self) -> JobHandle:
        job = await self.app.cancel_async(self.id)
        if job is None:
            raise JobNotFound(f"job {self.id} no longer exists")
        self.job = job
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job is finished; its result, or ``JobFailed`` / ``TimeoutError``."""
        return self.app.portal.call(self.wait_async(timeout))

    async def wait_async(self, timeout: float | None = None) -> Any:
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or math.isnan(timeout)):
            # NaN compares false with every deadline: the wait never ended
            raise ValidationError(f"timeout must be None or a number of seconds, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        backend = await self.app.backend()
        pause = 0.002
        revision = -1
        while True:
            current = (await backend.revisions([self.id])).get(self.id)
            if current is None:
                raise JobNotFound(f"job {self.id} no longer exists")
            if current != revision:
                revision = current
                await self.refresh_async()
                if self.status.terminal:
                    break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            await asyncio.sleep(pause if deadline is None else max(0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 1.5, 0.1)
        if self.status is Status.SUCCEEDED:
            return self.result
        error = dict(self.error) if self.error else None
        what = f": {error['type']}: {error['message']}" if error else ""
        raise JobFailed(f"job {self.id} ({self.job.task}) {self.status}{what}", error, str(self.status))
