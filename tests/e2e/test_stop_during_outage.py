"""A worker stopped (SIGTERM) while its engine is briefly unreachable records the outcomes it holds.

A job finishes while the engine is cut off; the worker keeps its outcome and writes it once the
engine is back. If a SIGTERM comes first, the stop gives its last outcomes ``SHUTDOWN_BOUND``
seconds: an outage that ends within them must not cost the job a second run (its lease would run
out and another worker would run it again). Found by a chaos soak: a worker stopped 2.4 s before
the end of a store outage gave up at the first refused connection and its finished jobs ran twice.
"""

from __future__ import annotations

import signal
import time

import pytest

from conveyor.core.job import Status
from conveyor.worker.stopping import SHUTDOWN_BOUND
from tests.e2e import test_faults
from tests.e2e.conftest import wait_for
from tests.e2e.jobs_app import recorded
from tests.e2e.test_faults import ProxiedEnv, fetch

pytestmark = pytest.mark.slow

faulty = test_faults.faulty  #: the fixture: workers reach Redis or PostgreSQL through a proxy

VISIBILITY = 60  #: no lease runs out during the test: a job still running at the end was not recorded
BACK_AFTER = 3.0  #: the engine comes back this long after the SIGTERM, well within SHUTDOWN_BOUND


def test_sigterm_in_a_short_outage__the_outcome_held_is_recorded_when_the_engine_is_back(faulty: ProxiedEnv) -> None:
    env = faulty
    worker = env.worker("--concurrency", "1", "--grace", "5", "--no-scheduler",
                        env=env.env(TEST_VISIBILITY=str(VISIBILITY)))
    handle = env.client.enqueue("work", (800,))
    wait_for(lambda: any(e["event"] == "start" for e in recorded(env.log)), timeout=20, what="the job to start")
    env.proxy.cut()
    try:
        wait_for(lambda: any(e["event"] == "end" for e in recorded(env.log)), timeout=10, what="the job to end")
        time.sleep(0.5)  # its outcome's first writes fail: the worker holds it
        worker.send_signal(signal.SIGTERM)
        time.sleep(BACK_AFTER)
    finally:
        env.proxy.restore()
    assert BACK_AFTER < SHUTDOWN_BOUND - 1
    assert worker.wait(3 * SHUTDOWN_BOUND + 15) == 0
    [job] = fetch(env.client, [handle])
    assert job.status is Status.SUCCEEDED, (
        f"the worker stopped without recording the outcome it held (job {job.status.value}):\n{env.logs()}")
    assert "outcomes at shutdown" not in env.logs()
    assert sum(e["event"] == "start" for e in recorded(env.log)) == 1
