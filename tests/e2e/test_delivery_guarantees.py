"""Three guarantees of SPEC §4 that were only checked by hand, with real worker processes on
every engine (RabbitMQ with its job records in a SQLite store):

- a dead worker's lease is put back by a live worker that is busy (every slot running a long
  job, so it never idles in a claim), at the latest 5 s after the lease ran out;
- a job cancelled while its worker drains after SIGTERM ends ``cancelled``, and the worker exits
  0 at once instead of waiting out its grace, starting nothing else meanwhile;
- a job delayed past the queue's visibility timeout runs once, at its due time;
- a job that arrives just after SIGTERM, while an idle worker's wait for work is in flight, is
  not started by that worker: handed back at once, not counted, it runs on another.
"""

from __future__ import annotations

import collections
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.core.job import Status
from tests.e2e.conftest import ENGINES, Env, drop_namespace, wait_for
from tests.e2e.jobs_app import recorded

pytestmark = pytest.mark.slow

#: SPEC §4: any live worker, idle or busy, puts a dead worker's jobs back at the latest this many
#: seconds after their lease ran out.
PUT_BACK_BOUND = 5.0
#: The queue's visibility timeout in these tests (seconds; SPEC's minimum is 1).
VISIBILITY = 1


@pytest.fixture(params=[*ENGINES, "amqp"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """``e2e_any`` and RabbitMQ too: each test in its own namespace, dropped afterwards."""
    name = f"e2e_{uuid.uuid4().hex[:10]}"
    if request.param == "amqp":
        monkeypatch.setenv("CONVEYOR_STORE_URL", f"sqlite:///{tmp_path}/store.db")  # the workers inherit it
        url = f"amqp://guest:guest@127.0.0.1:5672/?prefix={name}"
    else:
        url = ENGINES[request.param](tmp_path, name)
    env = Env(tmp_path, url)
    yield env
    env.stop()
    drop_namespace(env)


def starts(env: Env, job_id: str) -> list[dict[str, object]]:
    """The recorded starts of one job, oldest first."""
    return [e for e in recorded(env.log) if e["event"] == "start" and e["job"] == job_id]


def test_kill_9__a_busy_live_worker_puts_the_lease_back_within_5_s_of_its_expiry(engine: Env) -> None:
    """The only live worker has every slot taken by a long job, so its claim loop waits for a
    free slot and never polls the engine: its housekeeping alone must notice the dead worker's
    expired lease. Once a slot frees, it runs the job put back."""
    env = engine.env(TEST_VISIBILITY=str(VISIBILITY))
    busy = engine.worker("--concurrency", "2", "--no-scheduler", env=env)
    long_jobs = [engine.enqueue("sleeper", 30.0) for _ in range(2)]
    wait_for(lambda: all(starts(engine, j.id) for j in long_jobs), what="the long jobs to start")
    assert {s["pid"] for j in long_jobs for s in starts(engine, j.id)} == {busy.pid}

    doomed = engine.worker("--concurrency", "1", "--no-scheduler", env=env)
    job = engine.enqueue("whoami", 1.0)
    wait_for(lambda: starts(engine, job.id), what="the job to start on the second worker")
    assert starts(engine, job.id)[0]["pid"] == doomed.pid
    doomed.send_signal(signal.SIGKILL)
    killed_at = time.time()
    doomed.wait(5)
    expires = job.refresh().job.lease_expires_at
    assert job.status is Status.RUNNING and expires is not None

    deadline = killed_at + VISIBILITY + PUT_BACK_BOUND + 3.0  # bounded well past the promise
    while job.refresh().status is Status.RUNNING and time.time() < deadline:
        time.sleep(0.05)
    put_back_at = time.time()
    assert job.status is Status.QUEUED, f"still {job.status} {put_back_at - expires:.1f} s after the lease ran out"
    assert put_back_at - expires <= PUT_BACK_BOUND, f"put back {put_back_at - expires:.2f} s after the lease ran out"
    assert put_back_at - killed_at <= VISIBILITY + PUT_BACK_BOUND
    assert [j.refresh().status for j in long_jobs] == [Status.RUNNING] * 2  # busy all along

    long_jobs[0].cancel()  # a free slot: the busy worker runs the job put back
    assert job.wait(timeout=15) == busy.pid
    assert job.refresh().job.deliveries == 2
    assert [s["pid"] for s in starts(engine, job.id)] == [doomed.pid, busy.pid]


def test_cancel_during_the_sigterm_drain__job_ends_cancelled_and_the_worker_exits_0_at_once(engine: Env) -> None:
    """A cancel that arrives while a stopping worker waits for its running job ends that job
    ``cancelled`` (not handed back, not run again), and the worker exits 0 without waiting out
    the rest of its grace; a stopping worker starts nothing, not even in the slot the job freed."""
    grace = 30.0
    worker = engine.worker("--concurrency", "2", "--grace", str(grace), "--no-scheduler")
    job = engine.enqueue("sleeper", 25.0)  # cooperative: notices the cancel within 50 ms
    wait_for(lambda: starts(engine, job.id), what="the job to start")

    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    wait_for(lambda: "stopping: no new jobs" in engine.logs(), timeout=5, what="the worker to start draining")
    # at once: a wait for work still in flight (up to 0.25 s) that leases one hands it back
    others = [engine.enqueue("whoami", 0.0) for _ in range(2)]
    time.sleep(1.0)
    assert worker.poll() is None and job.refresh().status is Status.RUNNING  # the job has its grace

    job.cancel()
    assert worker.wait(10) == 0
    assert time.monotonic() - signalled < 6.0, f"exited {time.monotonic() - signalled:.1f} s after SIGTERM"

    final = job.refresh().job
    assert final.status is Status.CANCELLED and final.deliveries == 1 and final.finished_at is not None
    assert [o.refresh().status for o in others] == [Status.QUEUED] * 2
    events = recorded(engine.log)
    assert [e["job"] for e in events if e["event"] == "start"] == [job.id]  # nothing started in the drain
    assert not [e for e in events if e["event"] == "end"]

    engine.worker("--no-scheduler")  # the others run elsewhere; the cancelled job never again
    engine.wait_all(others, timeout=20)
    assert [o.status for o in others] == [Status.SUCCEEDED] * 2
    assert job.refresh().status is Status.CANCELLED and len(starts(engine, job.id)) == 1


def test_delay_longer_than_the_visibility_timeout__runs_once_at_its_due_time(engine: Env) -> None:
    """A delayed job waits in the engine's scheduled index, not under a lease (nor, on RabbitMQ,
    in a held delivery): with a delay of three visibility timeouts and two workers polling
    throughout, it starts once, at its due time, not earlier and not again."""
    delay = 3.0 * VISIBILITY
    env = engine.env(TEST_VISIBILITY=str(VISIBILITY))
    workers = [engine.worker("--no-scheduler", env=env) for _ in range(2)]
    warm = [engine.enqueue("add", n, 1) for n in range(4)]
    engine.wait_all(warm, timeout=20)  # both workers are up and idle from here

    before = time.time()
    job = engine.enqueue("whoami", 0.2, delay=delay)
    assert job.status is Status.SCHEDULED
    assert job.wait(timeout=delay + 10) in {w.pid for w in workers}
    ran = job.refresh().job
    assert ran.scheduled_at is not None and ran.started_at is not None
    assert ran.scheduled_at >= before + delay
    assert ran.scheduled_at <= ran.started_at < ran.scheduled_at + 0.5, \
        f"started {ran.started_at - ran.scheduled_at:+.3f} s from its due time"

    time.sleep(2.5 * VISIBILITY)  # past two more leases: a second run would show by now
    final = job.refresh().job
    assert final.status is Status.SUCCEEDED and final.deliveries == 1 and final.attempt == 1
    runs = collections.Counter(e["job"] for e in recorded(engine.log) if e["event"] == "start")
    assert runs[job.id] == 1


#: Idle workers stopped at once in ``test_sigterm__a_job_arriving_during_the_wait_in_flight...``:
#: each is one more chance for the race it checks.
STOPPED_AT_ONCE = 3


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_sigterm__a_job_arriving_during_the_wait_in_flight__is_handed_back_not_started(engine: Env, pool: str) -> None:
    """An idle worker waits for work up to 0.25 s, and a wait in flight when SIGTERM arrives is not
    cut short. A job enqueued a millisecond after the signal woke that wait, which leased it (on
    Redis the wait claims as the job arrives: in a pool thread with the thread pool, on the loop
    with the process pool), and the stopping worker ran it. SPEC §4: a stopping worker takes no new
    job. Each lease it still gets is handed back at once, not counted as a delivery; the jobs run
    on a fresh worker."""
    workers = [engine.worker("--pool", pool, "--concurrency", "2", "--no-scheduler") for _ in range(STOPPED_AT_ONCE)]
    wait_for(lambda: engine.logs().count(" ready: queues ") == STOPPED_AT_ONCE, timeout=30,
             what="the workers to be ready")
    assert engine.enqueue("add", 1, 2).wait(timeout=20) == 3  # the client is connected: enqueues are quick
    time.sleep(0.5)  # every worker is idle, in its wait for work

    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    # the jobs arrive once every worker has begun to stop (a job that arrives before a worker has
    # heard the signal may run there), a few milliseconds into their waits of up to 0.25 s
    deadline = time.monotonic() + 5.0
    while engine.logs().count(" stopping: no new jobs") < STOPPED_AT_ONCE and time.monotonic() < deadline:
        time.sleep(0.001)
    jobs = [engine.enqueue("whoami", 0.0) for _ in range(STOPPED_AT_ONCE)]
    assert [w.wait(15) for w in workers] == [0] * STOPPED_AT_ONCE

    assert not [e for e in recorded(engine.log) if e["event"] == "start"], "a stopping worker started a job"
    for job in jobs:
        record = job.refresh().job
        assert record.status is Status.QUEUED and record.deliveries == 0, record
        # leased in a wait, then handed back (another stopping worker's wait may lease it again)
        assert {a["status"] for a in record.attempts} <= {"handed_back"}, record.attempts

    fresh = engine.worker("--no-scheduler")
    engine.wait_all(jobs, timeout=20)
    assert [(j.status, j.result, j.job.deliveries) for j in jobs] == [(Status.SUCCEEDED, fresh.pid, 1)] * len(jobs)
