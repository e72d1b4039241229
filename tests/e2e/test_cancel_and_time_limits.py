"""Cancelling running jobs and time limits, in every pool, with real worker processes."""

from __future__ import annotations

import signal
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


@pytest.mark.parametrize("pool", ["thread", "async"])
def test_time_limit__async_task_that_swallows_its_cancel__fails_at_the_limit(e2e, pool):
    e2e.worker("--pool", pool)
    job = e2e.enqueue("async_stubborn", 8.0, timeout=0.5)
    wait_for(lambda: job.refresh().status.terminal, timeout=20, what="the time limit")
    final = job.job
    assert final.status is Status.FAILED and final.error["type"] == "TimeoutError"
    assert final.finished_at - final.started_at < 2.5  # the limit, plus 1 s for it to clean up
    assert e2e.enqueue("add", 1, 1).wait(timeout=20) == 2  # the worker goes on


def test_sigterm__async_task_that_swallows_its_cancel__worker_still_exits(e2e):
    worker = e2e.worker("--grace", "0.5")
    job = e2e.enqueue("async_stubborn", 60.0)
    wait_for(lambda: recorded(e2e.log), what="job start")
    worker.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert worker.wait(15) == 0
    assert time.monotonic() - stopped < 8  # grace 0.5 s + at most 5 s for the leftovers
    handed = job.refresh().job
    assert handed.status is Status.QUEUED and handed.deliveries == 0


def _overlaps(events: list[dict]) -> list[tuple[float, int]]:
    """The moments when more than one task body ran at once (from their start and end records)."""
    running, crowded = 0, []
    for event in sorted(events, key=lambda e: (e["t"], e["event"] == "start")):  # an end first at a tie
        running += 1 if event["event"] == "start" else -1
        if running > 1:
            crowded.append((event["t"], running))
    return crowded


def test_time_limit__thread_past_its_limit_keeps_its_slot_until_it_returns(e2e):
    """Python cannot stop a thread: the first attempt ran on past its limit while its retry and
    the next job started beside it, two threads running under --concurrency 1."""
    e2e.worker("--concurrency", "1")
    job = e2e.enqueue("overrun", 2.0, max_retries=1)
    wait_for(lambda: recorded(e2e.log), timeout=20, what="the first attempt's start")
    other = e2e.enqueue("work", 10)
    wait_for(lambda: len([e for e in recorded(e2e.log) if e["event"] == "end"]) == 3, timeout=30,
             what="both attempts' threads and the other job to return")
    events = recorded(e2e.log)
    assert _overlaps(events) == []
    first_end = next(e["t"] for e in events if e["event"] == "end")
    assert [e["job"] for e in events if e["t"] < first_end] == [job.id]  # nothing started beside it
    assert [e["job"] for e in events if e["event"] == "start"].count(job.id) == 2  # the retry ran after
    wait_for(lambda: job.refresh().status.terminal, timeout=10, what="the retry's time limit")
    assert (job.status, job.job.attempt, job.job.error["type"]) == (Status.FAILED, 2, "TimeoutError")
    assert other.wait(timeout=10) == 10
    warned = [line for line in e2e.logs().splitlines() if "WARNING" in line and job.id in line]
    assert warned and "slot" in warned[0]
