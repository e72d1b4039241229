"""An idle worker starts a delayed or retrying job when it comes due, not at the end of a wait.

The worker is the loop a real one runs while idle (``idle_until_leased``): claim, wait for work,
claim again. Its waits are long, so a job starts on time only if the wait knows when it comes
due, including a job delayed while the worker already waits. A wait may end early (a wake-up
is a hint), but the loop counts its claims, so that a wait which does not wait shows up.
"""

from __future__ import annotations

import asyncio
import time

from conveyor.backends.base import Outcome
from conveyor.core.job import Status

LATE = 0.15  #: how long after its due time a job may start (a few hops: wake-up, claim)
CLAIMS = 4  #: claims an idle worker may make for one job (a spurious wake-up or two)


async def test_idle_worker__job_delayed_before_it_waits__starts_when_due(backend, submit, idle_until_leased):
    job = await submit(scheduled_at=time.time() + 0.3)
    assert job.status is Status.SCHEDULED

    lease, claims = await idle_until_leased(backend)

    assert lease.job.id == job.id
    assert job.scheduled_at <= lease.job.started_at < job.scheduled_at + LATE
    assert claims <= CLAIMS


async def test_idle_worker__job_delayed_while_it_waits__starts_when_due(backend, submit, idle_until_leased):
    async def submit_soon():
        await asyncio.sleep(0.1)  # the worker waits by now
        return await submit(scheduled_at=time.time() + 0.3)

    submitting = asyncio.create_task(submit_soon())
    lease, claims = await idle_until_leased(backend)
    job = await submitting

    assert lease.job.id == job.id
    assert job.scheduled_at <= lease.job.started_at < job.scheduled_at + LATE
    assert claims <= CLAIMS


async def test_idle_worker__retry_comes_due__starts_when_due(backend, submit, claim_one, idle_until_leased):
    job = await submit()
    lease = await claim_one()
    due = time.time() + 0.3
    assert await backend.finish([Outcome(job.id, lease.token, Status.RETRYING, error={"type": "Boom"},
                                         scheduled_at=due, attempt=2)], time.time()) == [True]

    retry, claims = await idle_until_leased(backend)

    assert retry.job.id == job.id and retry.job.attempt == 2
    assert due <= retry.job.started_at < due + LATE
    assert claims <= CLAIMS
