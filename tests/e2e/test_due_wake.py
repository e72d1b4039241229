"""A real, idle `conveyor worker` starts a delayed job at its due time, not up to a wait later."""

from __future__ import annotations

import pytest

from conveyor.core.job import Status

pytestmark = pytest.mark.slow


def test_delay__idle_worker__starts_each_job_within_0_1_s_of_its_due_time(e2e_any):
    e2e_any.worker()
    assert e2e_any.enqueue("add", 0, 0).wait(timeout=20) == 0  # the worker is up; it idles from here
    handles = [e2e_any.enqueue("add", n, 1, delay=delay) for n, delay in enumerate((0.3, 0.45, 0.6))]
    e2e_any.wait_all(handles, timeout=10)

    for handle in handles:
        job = handle.refresh().job
        assert job.status is Status.SUCCEEDED
        assert job.scheduled_at <= job.started_at < job.scheduled_at + 0.1, handle.id
