"""What a worker records of a job as it ends: its outcome when a first send may have landed, its last progress."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.backends.base import Outcome
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.core.errors import BackendUnavailable
from conveyor.core.job import Status
from conveyor.core.task import Task
from conveyor.worker.worker import Worker


class ReplyLostOnce(SQLiteBackend):
    """A real SQLite engine whose first write of outcomes is applied, and then its reply is lost
    (the connection dropped after the commit): the worker sends those outcomes again."""

    lost = False

    async def _applied_then_lost(self, call: Any) -> Any:
        result = await call
        if not self.lost:
            self.lost = True
            raise BackendUnavailable("the connection dropped before the reply")
        return result

    async def finish(self, outcomes: Sequence[Outcome], now: float) -> list[bool]:
        return await self._applied_then_lost(super().finish(outcomes, now))  # type: ignore[no-any-return]

    async def finish_and_claim(self, outcomes: Sequence[Outcome], *args: Any) -> Any:
        return await self._applied_then_lost(super().finish_and_claim(outcomes, *args))


def test_outcome_sent_again_after_a_lost_reply__refused__not_called_a_lost_lease(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The repeat is refused (the first send ended the lease): the worker warned that 'the lease
    had passed to another worker', which sent people looking for a second worker that was never
    there. The job's outcome is the first send's."""
    url = f"sqlite:///{tmp_path}/lost.db"
    app = Conveyor(url)

    @app.task
    def double(ctx: Context, x: int) -> int:
        return 2 * x

    handle = double.enqueue(21)
    backend = ReplyLostOnce(url)
    worker = Worker(app, backend=backend, burst=True, scheduler=False)

    with caplog.at_level(logging.INFO, logger="conveyor.worker.reporter"):
        assert asyncio.run(asyncio.wait_for(worker.run(), 30)) == 0

    assert backend.lost
    said = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [(r.levelno, "sent again after a failed send" in r.getMessage()) for r in said] == [(logging.INFO, True)]
    job = handle.refresh()
    assert (job.status, job.result) == (Status.SUCCEEDED, 42)
    app.close()


def _reporting_app(url: str) -> tuple[Conveyor, Task]:
    """An app whose task reports its progress as done, then returns at once."""
    app = Conveyor(url)

    @app.task
    def step(ctx: Context, i: int) -> int:
        ctx.progress(1.0, "done")
        return i

    return app, step


def test_progress_reported_just_before_the_task_returns__is_in_the_final_record(tmp_path: Path) -> None:
    """The outcome could travel with the worker's next claim ahead of the progress still queued,
    and the progress, sent after the lease ended, was refused: most jobs ended with an older
    progress, or none."""
    app, step = _reporting_app(f"sqlite:///{tmp_path}/progress.db")
    handles = step.enqueue_many([(i,) for i in range(40)])
    assert asyncio.run(asyncio.wait_for(Worker(app, burst=True, scheduler=False).run(), 60)) == 0

    jobs = [h.refresh() for h in handles]
    assert {j.status for j in jobs} == {Status.SUCCEEDED}
    assert [j.progress for j in jobs] == [{"fraction": 1.0, "message": "done"}] * 40
    app.close()


class ProgressUnreachableOnce(SQLiteBackend):
    """A real SQLite engine that is unreachable for the first progress write (nothing applied)."""

    failed = False

    async def set_progress(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise BackendUnavailable("engine unreachable (connection refused)")
        return await super().set_progress(*args, **kwargs)


def test_last_progress__survives_an_outage_at_its_send(tmp_path: Path) -> None:
    """The send failed; the outcome went again after the outage, the progress did not (a chaos
    soak: 3-4 of 240 such jobs per run ended with an older progress)."""
    url = f"sqlite:///{tmp_path}/outage.db"
    app, step = _reporting_app(url)
    handle = step.enqueue(1)
    backend = ProgressUnreachableOnce(url)
    assert asyncio.run(asyncio.wait_for(Worker(app, backend=backend, burst=True, scheduler=False).run(), 30)) == 0

    assert backend.failed
    job = handle.refresh()
    assert (job.status, job.progress) == (Status.SUCCEEDED, {"fraction": 1.0, "message": "done"})
    app.close()


class SlowFirstProgress(SQLiteBackend):
    """A real SQLite engine slow to write the progress 'x': the reports after it wait for the next flush."""

    async def set_progress(self, job_id: str, token: str, progress: Any, now: float) -> bool:
        if progress.get("message") == "x":
            await asyncio.sleep(0.5)
        return await super().set_progress(job_id, token, progress, now)  # type: ignore[no-any-return]


def test_last_progress__not_replaced_by_an_earlier_attempt_still_running(tmp_path: Path) -> None:
    """The first attempt passed its time limit and its thread ran on (threads cannot be stopped);
    it reported while this worker ran the retry: that report, under the old lease, took the place
    of the retry's own last progress and was refused, so the job ended with an older progress."""
    url = f"sqlite:///{tmp_path}/stale.db"
    app = Conveyor(url)
    retry_reported, stale_reported = threading.Event(), threading.Event()

    @app.task(timeout=0.3, backoff=0.01, backoff_cap=0.01)
    def slow(ctx: Context) -> str:
        if ctx.job.attempt == 1:
            retry_reported.wait(10)  # past its time limit, while the retry runs
            ctx.progress(0.5, "stale")
            stale_reported.set()
            return "late"
        ctx.progress(0.1, "x")
        time.sleep(0.1)  # its flush is under way
        ctx.progress(1.0, "done")
        retry_reported.set()
        stale_reported.wait(10)
        return "ok"

    handle = slow.enqueue()

    async def run_until_succeeded() -> int:
        worker = Worker(app, backend=SlowFirstProgress(url), scheduler=False)
        running = asyncio.ensure_future(worker.run())
        for _ in range(200):
            await asyncio.sleep(0.05)
            if (await asyncio.to_thread(handle.refresh)).status is Status.SUCCEEDED:
                break
        worker.stop()
        return await asyncio.wait_for(running, 30)

    assert asyncio.run(run_until_succeeded()) == 0
    assert stale_reported.is_set()
    job = handle.refresh()
    assert (job.status, job.result, job.progress) == (Status.SUCCEEDED, "ok", {"fraction": 1.0, "message": "done"})
    app.close()


class ParentsUnreadableOnce(SQLiteBackend):
    """A real SQLite engine whose first read of jobs fails (the connection dropped): the read of a
    dependent job's parents' results, which the worker makes as the job starts."""

    failed = False

    async def get_jobs(self, ids: Sequence[str]) -> list[Any]:
        if not self.failed:
            self.failed = True
            raise BackendUnavailable("the connection dropped")
        return await super().get_jobs(ids)


def test_parents_results_unreadable_as_a_dependent_starts__handed_back_and_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A chaos soak cut the store just as a dependent job started: the read of its parents'
    results raised, its coroutine died ('Task exception was never retrieved', an ERROR with a
    traceback), and the job stayed running with nothing running it until its lease ran out. It is
    handed back (not counted as a delivery) and runs once the engine answers."""
    url = f"sqlite:///{tmp_path}/parents.db"
    app = Conveyor(url)

    @app.task
    def double(ctx: Context, x: int) -> int:
        return 2 * x

    @app.task
    def total(ctx: Context) -> int:
        return sum(ctx.parent_results.values())

    parent = double.enqueue(21)
    child = total.enqueue(depends_on=[parent])
    backend = ParentsUnreadableOnce(url)
    worker = Worker(app, backend=backend, burst=True, scheduler=False)

    with caplog.at_level(logging.WARNING, logger="conveyor.worker.worker"):
        assert asyncio.run(asyncio.wait_for(worker.run(), 30)) == 0

    assert backend.failed
    job = child.refresh().job
    assert (job.status, job.result, job.deliveries) == (Status.SUCCEEDED, 42, 1)
    assert [r.levelno for r in caplog.records if child.id in r.getMessage()] == [logging.WARNING]
    app.close()
