"""Cancelling running jobs and time limits, in every pool, with real worker processes."""

from __future__ import annotations

import time

import pytest

from conveyor.core.job import Status
from tests.e2e.conftest import wait_for
from tests.e2e.jobs_app import recorded

pytestmark = pytest.mark.slow

CASES = [  # (pool, task): async tasks run on the loop in every pool
    ("thread", "stubborn"),  # ignores ctx.cancelled: settled at once, the thread's result dropped
    ("thread", "async_sleeper"),
    ("process", "stubborn"),  # the child process is killed
]


@pytest.mark.parametrize(("pool", "task"), CASES)
def test_cancel_running_job__cancelled_within_one_second(e2e, pool, task):
    e2e.worker("--pool", pool, "--concurrency", "2")
    job = e2e.enqueue(task, 30.0)
    wait_for(lambda: job.refresh().status is Status.RUNNING and recorded(e2e.log), timeout=20, what="running")
    asked = time.monotonic()
    job.cancel()
    wait_for(lambda: job.refresh().status is Status.CANCELLED, timeout=5, what="cancelled")
    assert time.monotonic() - asked < 1.0
    assert job.job.finished_at is not None
    # the worker is free again: the next job runs
    assert e2e.enqueue("add", 1, 1).wait(timeout=20) == 2


@pytest.mark.parametrize(("pool", "task"), [("thread", "overrun"), ("process", "overrun"),
                                             ("thread", "async_overrun")])
def test_time_limit__attempt_fails_with_timeout_error_in_every_pool(e2e, pool, task):
    e2e.worker("--pool", pool)
    job = e2e.enqueue(task, 10.0)
    wait_for(lambda: job.refresh().status.terminal, timeout=20, what="the time limit")
    final = job.job
    assert final.status is Status.FAILED and final.error["type"] == "TimeoutError"
    assert final.finished_at - final.started_at < 2.0  # settled at the limit, not when the code returned
    assert not [e for e in recorded(e2e.log) if e["event"] == "end"]


def test_time_limit__is_retried_like_any_failure(e2e):
    e2e.worker()
    job = e2e.enqueue("overrun", 10.0, max_retries=1)
    wait_for(lambda: job.refresh().status.terminal, timeout=20, what="both attempts")
    assert job.status is Status.FAILED and job.job.attempt == 2
    assert [a["status"] for a in job.job.attempts] == ["retrying", "failed"]
