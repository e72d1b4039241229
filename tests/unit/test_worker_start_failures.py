"""A job the worker fails to prepare (its parents' results unreadable, a bug on the way to its
start) ends its attempt with that error; the worker goes on."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.backends.base import Lease
from conveyor.core.job import Status
from conveyor.worker.pools import Call, Pool, ThreadPool
from conveyor.worker.worker import Running, Worker


def test_parent_result_that_cannot_be_decoded__dependent_fails_its_attempt_and_the_worker_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The parent's stored result is not JSON (a record damaged on disk, or written by another
    tool). The read of it as the dependent started raised: its coroutine died ('Task exception was
    never retrieved') and the job stayed running, with nothing running it."""
    url = f"sqlite:///{tmp_path}/parents.db"
    app = Conveyor(url)

    @app.task(queue="first")
    def double(ctx: Context, x: int) -> int:
        return 2 * x

    @app.task(queue="then", max_retries=0)
    def total(ctx: Context) -> int:
        return sum(ctx.parent_results.values())

    parent = double.enqueue(21)
    child = total.enqueue(depends_on=[parent])
    assert asyncio.run(asyncio.wait_for(Worker(app, queues=["first"], burst=True, scheduler=False).run(), 30)) == 0
    assert parent.refresh().status is Status.SUCCEEDED
    with sqlite3.connect(tmp_path / "parents.db") as db:
        db.execute("UPDATE jobs SET result = ? WHERE id = ?", ('{"damaged', parent.id))
    after = total.enqueue()  # the worker runs the next job all the same

    with caplog.at_level(logging.WARNING, logger="conveyor"):
        assert asyncio.run(asyncio.wait_for(Worker(app, queues=["then"], burst=True, scheduler=False).run(), 30)) == 0

    job = child.refresh().job
    assert job.status is Status.FAILED and job.error["type"] == "JSONDecodeError"
    assert after.refresh().status is Status.SUCCEEDED
    told = [r for r in caplog.records if child.id in r.getMessage()]
    assert [r.levelno for r in told] == [logging.ERROR] and told[0].exc_info is not None  # once, with its traceback
    app.close()


async def run_until_ended(worker: Worker, handles: Sequence[Any]) -> int:
    """Run ``worker`` until every job of ``handles`` ended (10 s at most), then stop it; its exit code."""
    running = asyncio.ensure_future(worker.run())
    for _ in range(200):
        await asyncio.sleep(0.05)
        if all(h.status.terminal for h in await asyncio.to_thread(lambda: [h.refresh() for h in handles])):
            break
    worker.stop()
    return await asyncio.wait_for(running, 30)


class FailsToPrepare(Worker):
    """A worker with a bug on the way to starting one job (here: building its ``Running``)."""

    def _running(self, loop: asyncio.AbstractEventLoop, lease: Lease, fn: Any) -> Running:
        if lease.job.kwargs.get("x") == 13:
            raise RuntimeError("a bug while preparing the job")
        return super()._running(loop, lease, fn)


@pytest.mark.parametrize("max_retries", [0, 1])
def test_exception_while_starting_a_job__its_attempt_fails_by_the_retry_rules__the_others_run(
        tmp_path: Path, max_retries: int) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/start.db")

    @app.task(backoff=0.01, backoff_cap=0.01)
    def double(ctx: Context, x: int) -> int:
        return 2 * x

    handles = double.enqueue_many([{"x": x} for x in (1, 13, 2)], max_retries=max_retries)
    worker = FailsToPrepare(app, scheduler=False)
    assert asyncio.run(run_until_ended(worker, handles)) == 0  # the worker lived on, and stopped as asked

    ok1, broken, ok2 = (h.refresh().job for h in handles)
    assert (ok1.status, ok1.result, ok2.status, ok2.result) == (Status.SUCCEEDED, 2, Status.SUCCEEDED, 4)
    assert broken.status is Status.FAILED and broken.attempt == max_retries + 1  # retried first, if it may
    assert [a["status"] for a in broken.attempts] == ["retrying"] * max_retries + ["failed"]
    assert broken.error["type"] == "RuntimeError" and "a bug while preparing" in broken.error["message"]
    assert not worker.running and not worker.owed_leases()
    app.close()


class ThreadsRunOut(ThreadPool):
    """A thread pool whose first hand-off of jobs fails, as when the process may start no more
    threads (``RuntimeError: can't start new thread``, a ulimit reached)."""

    failed = False

    def start(self, calls: Sequence[Call]) -> None:
        if not self.failed and any(isinstance(c, Running) for c in calls):
            self.failed = True
            raise RuntimeError("can't start new thread")
        super().start(calls)


class RunsOutOfThreads(Worker):
    def _make_pool(self) -> Pool:
        return ThreadsRunOut(self.concurrency, on_returned=self._slot_free.set)


def test_jobs_no_thread_could_be_started_for__fail_their_attempt_and_run_again(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/threads.db")

    @app.task(backoff=0.01, backoff_cap=0.01)
    def double(ctx: Context, x: int) -> int:
        return 2 * x

    handles = double.enqueue_many([{"x": x} for x in range(3)], max_retries=1)
    worker = RunsOutOfThreads(app, scheduler=False)
    assert asyncio.run(run_until_ended(worker, handles)) == 0

    jobs = [h.refresh().job for h in handles]
    assert [(j.status, j.result) for j in jobs] == [(Status.SUCCEEDED, 2 * x) for x in range(3)]
    failed = [a["error"] for j in jobs for a in j.attempts if a["status"] == "retrying"]
    assert failed and all(e["message"] == "can't start new thread" for e in failed)
    assert not worker.running and worker._pool is not None and worker._pool.overrunning == 0
    app.close()
