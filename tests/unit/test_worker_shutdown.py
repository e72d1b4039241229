"""A stop does not wait out a database client's own answer to a cancel, nor start a job it leased."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from conveyor import Context, Conveyor
from conveyor.backends.base import Lease
from conveyor.core.job import Status
from conveyor.worker.stopping import cancel_within
from conveyor.worker.worker import Worker


async def query_on_a_silent_server() -> None:
    """What psycopg does with a query the server never answers: a first cancel asks the server
    to cancel it and waits 10 s for that; a second cancel closes the connection at once."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(10)
        raise


async def failing() -> None:
    raise RuntimeError("the engine is gone")


def test_cancel_within__a_task_that_waits_out_its_first_cancel__ends_at_the_second() -> None:
    async def go() -> tuple[float, list[bool]]:
        tasks = [asyncio.create_task(query_on_a_silent_server()) for _ in range(3)]
        await asyncio.sleep(0)
        started = time.monotonic()
        await cancel_within(tasks, 5.0)
        return time.monotonic() - started, [t.cancelled() for t in tasks]

    took, cancelled = asyncio.run(go())
    assert cancelled == [True, True, True]
    assert took < 2.0


def test_cancel_within__a_task_that_never_ends__is_left_after_the_bound() -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue

    async def go() -> tuple[float, bool]:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        started = time.monotonic()
        await cancel_within([task], 0.3)
        took, done = time.monotonic() - started, task.done()
        released.set()  # the test's own clean-up
        await task
        return took, done

    took, done = asyncio.run(go())
    assert not done
    assert 0.25 < took < 1.0


def test_cancel_within__a_failed_task__its_error_is_taken_not_raised() -> None:
    async def go() -> bool:
        task = asyncio.create_task(failing())
        await asyncio.sleep(0)
        await cancel_within([task], 1.0)
        return task.done()

    assert asyncio.run(go())


class StoppedDuringItsClaim(Worker):
    """A worker whose SIGTERM arrives while a claim's reply is on its way (here: as it lands)."""

    async def _report_and_claim(self, free: int) -> list[Lease]:
        leases = await super()._report_and_claim(free)
        if leases:
            self.stop()
        return leases


def test_stop_during_a_claim__its_leases_are_handed_back_uncounted_and_nothing_runs(tmp_path: Path) -> None:
    """SPEC §4: a stopping worker takes no new jobs. The jobs a claim leased after the stop began
    ran (and a drain waited for them); they are handed back at once, not counted as deliveries."""
    app = Conveyor(f"sqlite:///{tmp_path}/stop.db")
    ran: list[str] = []

    @app.task
    def sync_job(ctx: Context) -> None:
        ran.append("sync")

    @app.task
    async def async_job(ctx: Context) -> None:
        ran.append("async")

    jobs = [sync_job.enqueue(), async_job.enqueue()]
    worker = StoppedDuringItsClaim(app, concurrency=2, grace=30.0, scheduler=False)
    assert asyncio.run(asyncio.wait_for(worker.run(), 30)) == 0
    assert ran == []
    records = [j.refresh().job for j in jobs]
    assert [(r.status, r.deliveries) for r in records] == [(Status.QUEUED, 0)] * 2
    assert [[a["status"] for a in r.attempts] for r in records] == [["handed_back"]] * 2

    assert asyncio.run(asyncio.wait_for(Worker(app, burst=True, scheduler=False).run(), 30)) == 0
    assert sorted(ran) == ["async", "sync"]
    assert [(j.refresh().status, j.job.deliveries) for j in jobs] == [(Status.SUCCEEDED, 1)] * 2
    app.close()
