"""A real `conveyor worker` process against SQLite: the guarantees of SPEC §4, end to end."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import httpx
import pytest

from conveyor.core.errors import InvalidArguments, JobFailed, ValidationError
from conveyor.core.job import Status
from tests.api.conftest import free_port
from tests.e2e.conftest import wait_for, workers_until_terminal
from tests.e2e.jobs_app import recorded

pytestmark = pytest.mark.slow


def test_round_trip__sync_and_async_tasks_succeed(e2e):
    e2e.worker()
    sync_job = e2e.enqueue("add", 2, 3)
    async_job = e2e.enqueue("async_add", a=4, b=5)
    assert sync_job.status is Status.QUEUED
    assert sync_job.wait(timeout=20) == 5
    assert async_job.wait(timeout=20) == 9
    job = sync_job.refresh().job
    assert job.started_at and job.finished_at and job.finished_at >= job.started_at
    assert job.attempt == 1 and job.deliveries == 1


def test_retries__failing_attempts_are_retried_then_succeed(e2e):
    e2e.worker()
    job = e2e.enqueue("flaky", 2)
    assert job.wait(timeout=20) == "ok after 3 attempts"
    assert job.refresh().job.attempt == 3


def test_dead_letters__exhausted_retries_fail_and_redrive_runs_them_again(e2e):
    e2e.worker()
    job = e2e.enqueue("always_fails")
    with pytest.raises(JobFailed) as err:
        job.wait(timeout=20)
    assert err.value.status == "failed" and err.value.error["type"] == "ValueError"
    assert job.refresh().job.attempt == 2  # the first attempt and its one retry
    assert "this task always fails" in job.error["message"] and "Traceback" in job.error["traceback"]

    async def redrive():
        backend = await e2e.client.backend()
        return await backend.requeue("default", None, [Status.FAILED], time.time())

    redriven = e2e.client.portal.call(redrive())
    assert [j.id for j in redriven] == [job.id]
    wait_for(lambda: job.refresh().status is Status.FAILED and job.job.finished_at, what="second failure")
    assert job.job.attempt == 2 and job.job.deliveries == 2  # attempts reset by redrive, then retried once


def test_kill_9__every_job_still_succeeds(e2e_any):
    """kill -9 a worker while a few hundred 20 ms jobs run; a fresh worker finishes them all."""
    env = e2e_any.env(TEST_VISIBILITY="1")  # the killed worker's leases run out 1 s after its last heartbeat
    first = e2e_any.worker("--concurrency", "8", env=env)
    jobs = e2e_any.client.enqueue_many([("work", (20,), {}, {}) for _ in range(300)])
    wait_for(lambda: len(recorded(e2e_any.log)) > 150, what="jobs to start")
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    e2e_any.worker("--concurrency", "8", env=env)
    e2e_any.wait_all(jobs, timeout=60)
    assert all(j.status is Status.SUCCEEDED for j in jobs)
    starts = collections.Counter(e["job"] for e in recorded(e2e_any.log) if e["event"] == "start")
    duplicates = [job_id for job_id, n in starts.items() if n > 1]
    assert len(starts) == 300
    assert len(duplicates) <= 8  # only the jobs that were running at the kill run twice


def test_busy_worker__leases_no_job_it_has_no_slot_for__an_idle_one_runs_them_at_once(e2e_any):
    """No prefetch (SPEC §4): a worker whose one slot runs a long job holds none of the jobs
    queued behind it, so a worker that starts later runs them all while the long one still runs."""
    busy = e2e_any.worker("--concurrency", "1", "--no-scheduler")
    long_job = e2e_any.enqueue("whoami", 6.0)
    wait_for(lambda: long_job.refresh().status is Status.RUNNING, what="the long job to start")
    short = [e2e_any.enqueue("whoami", 0) for _ in range(3)]
    time.sleep(0.5)  # time enough for a prefetching worker to take them
    idle = e2e_any.worker("--concurrency", "1", "--no-scheduler")
    e2e_any.wait_all(short, timeout=20)
    assert [j.status for j in short] == [Status.SUCCEEDED] * 3
    assert [j.result for j in short] == [idle.pid] * 3, f"the busy worker is {busy.pid}"
    assert long_job.refresh().status is Status.RUNNING  # the short ones did not wait for it


def test_burst__puts_back_and_runs_a_dead_workers_expired_lease_before_it_stops(e2e_any):
    env = e2e_any.env(TEST_VISIBILITY="1")
    dying = e2e_any.worker(env=env)
    job = e2e_any.enqueue("whoami", 0.5)
    wait_for(lambda: recorded(e2e_any.log), what="the job to start")
    dying.send_signal(signal.SIGKILL)
    dying.wait(5)
    # its lease runs out (1 s visibility timeout, no heartbeat since the kill)
    wait_for(lambda: job.refresh().job.lease_expires_at < time.time(), what="the dead worker's lease to run out")
    burst = e2e_any.worker("--burst", "--no-scheduler", env=env)
    assert burst.wait(30) == 0
    assert job.refresh().status is Status.SUCCEEDED and job.result == burst.pid


def test_sigterm__running_jobs_finish_within_grace_and_worker_exits_0(e2e_any):
    worker = e2e_any.worker("--grace", "10")
    job = e2e_any.enqueue("sleeper", 1.0)
    wait_for(lambda: recorded(e2e_any.log), what="job start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert job.refresh().status is Status.SUCCEEDED


def test_sigterm__an_idle_worker_exits_0_at_once_every_time(e2e_any):
    """Stopping never waits on a helper loop whose cancel was swallowed (it did, on Redis: a
    stop took 60 s, then exit 70). The worker idles a while first: that is when it happened."""
    for n in range(3):
        worker = e2e_any.worker("--no-scheduler")
        time.sleep(1.0)
        assert e2e_any.enqueue("add", n, 1).wait(timeout=20) == n + 1
        worker.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert worker.wait(15) == 0
        assert time.monotonic() - stopped < 5


def test_sigterm__unfinished_jobs_are_handed_back_for_immediate_redelivery(e2e_any):
    worker = e2e_any.worker("--grace", "0.5")
    job = e2e_any.enqueue("stubborn", 1.5)  # still running when the grace ends
    wait_for(lambda: recorded(e2e_any.log), what="job start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    handed = job.refresh().job
    assert handed.status is Status.QUEUED and handed.deliveries == 0  # not counted as a delivery
    e2e_any.worker()
    assert job.wait(timeout=20) == "done"


def test_second_sigterm__hands_the_running_jobs_back_at_once(e2e):
    """The docs promise that a second stop signal hands the running jobs back now; the drain kept
    waiting out the grace it had started with (the job ran on to its end, 8.6 s later)."""
    worker = e2e.worker("--grace", "30")
    job = e2e.enqueue("stubborn", 10.0)
    wait_for(lambda: recorded(e2e.log), what="job start")
    worker.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert worker.poll() is None  # the first signal gives the job its grace
    worker.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert worker.wait(10) == 0
    assert time.monotonic() - stopped < 3
    handed = job.refresh().job
    assert handed.status is Status.QUEUED and handed.deliveries == 0


def test_process_killing_task__fails_after_max_deliveries_without_looping(e2e):
    job = e2e.enqueue("suicide")
    workers_until_terminal(e2e, job, "--queues", "crashy")
    assert job.status is Status.FAILED
    assert job.error["type"] == "DeliveryLimitExceeded"
    assert job.job.deliveries == 3
    assert len([e for e in recorded(e2e.log) if e["event"] == "start"]) == 3  # never a fourth run


def test_fencing__a_worker_whose_lease_expired_cannot_overwrite_the_outcome(e2e_any):
    env = e2e_any.env(TEST_VISIBILITY="1")
    slow = e2e_any.worker(env=env)
    job = e2e_any.enqueue("whoami", 1.0)  # stopped below long before its end
    wait_for(lambda: recorded(e2e_any.log), what="first start")
    slow.send_signal(signal.SIGSTOP)  # frozen: no heartbeat, the lease runs out
    fast = e2e_any.worker(env=env)
    try:
        wait_for(lambda: len([e for e in recorded(e2e_any.log) if e["event"] == "start"]) == 2, timeout=20,
                 what="redelivery to the second worker")
    finally:
        slow.send_signal(signal.SIGCONT)
    assert job.wait(timeout=20) == fast.pid
    # the first worker's thread finishes now; a stop then sends whatever outcome it holds before
    # the process exits, so once it has exited its outcome was refused or never sent
    wait_for(lambda: any(e["event"] == "end" and e["pid"] == slow.pid for e in recorded(e2e_any.log)),
             what="the first worker's run to end")
    slow.send_signal(signal.SIGTERM)
    slow.wait(15)
    final = job.refresh().job
    assert final.result == fast.pid and final.status is Status.SUCCEEDED and final.deliveries == 2


def test_delay__job_does_not_start_before_its_time(e2e):
    e2e.worker()
    start = time.time()
    job = e2e.enqueue("add", 1, 1, delay=1.5)
    assert job.status is Status.SCHEDULED
    assert job.wait(timeout=20) == 2
    assert job.refresh().job.started_at >= start + 1.5


def test_priority__higher_first_then_fifo(e2e):
    tags = [("low-1", 0), ("high-1", 9), ("mid", 5), ("high-2", 9), ("low-2", 0)]
    jobs = [e2e.enqueue("record_priority", tag, priority=p) for tag, p in tags]
    e2e.worker("--concurrency", "1")
    e2e.wait_all(jobs)
    order = [e["tag"] for e in recorded(e2e.log)]
    assert order == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_cancel__queued_at_once_and_running_cooperatively(e2e):
    queued = e2e.enqueue("add", 1, 2, delay=60)
    assert queued.cancel().status is Status.CANCELLED
    e2e.worker()
    running = e2e.enqueue("sleeper", 30.0)
    wait_for(lambda: running.refresh().status is Status.RUNNING, what="running")
    asked = time.monotonic()
    running.cancel()
    wait_for(lambda: running.refresh().status is Status.CANCELLED, timeout=5, what="cancelled")
    assert time.monotonic() - asked < 1.5
    assert not [e for e in recorded(e2e.log) if e["event"] == "end"]


def test_progress__visible_while_the_job_runs(e2e):
    e2e.worker()
    job = e2e.enqueue("progress_steps", 10)
    wait_for(lambda: (job.refresh().progress or {}).get("fraction", 0) > 0, what="progress")
    assert job.progress["message"].startswith("step")
    job.wait(timeout=20)
    assert job.refresh().progress == {"fraction": 1.0, "message": "step 10"}


def test_progress__a_message_that_is_not_text__fails_that_job_and_reporting_goes_on(e2e):
    e2e.worker()
    bad = e2e.enqueue("progress_object")
    with pytest.raises(JobFailed):
        bad.wait(timeout=20)
    assert bad.error["type"] == "ValidationError" and "progress message" in bad.error["message"]
    job = e2e.enqueue("progress_steps", 10)
    wait_for(lambda: (job.refresh().progress or {}).get("fraction", 0) > 0, what="progress")
    assert job.wait(timeout=20) == 10


def test_dependencies__child_reads_its_parents_results(e2e):
    e2e.worker()
    a = e2e.enqueue("add", 1, 2)
    b = e2e.enqueue("add", 3, 4)
    child = e2e.enqueue("parents", depends_on=[a, b])
    assert child.wait(timeout=20) == {a.id: 3, b.id: 7}


def test_max_tasks_per_child__each_process_runs_its_share_then_is_replaced(e2e):
    e2e.worker("--pool", "process", "--concurrency", "1", "--max-tasks-per-child", "2")
    jobs = [e2e.enqueue("whoami", 0.0) for _ in range(6)]
    pids = [job.wait(timeout=30) for job in jobs]
    assert len(set(pids)) == 3 and all(pids.count(pid) == 2 for pid in pids)
    assert all(job.refresh().job.deliveries == 1 for job in jobs)  # replaced between jobs, never during one
    assert "--max-tasks-per-child 2" in e2e.logs()


def test_max_tasks_per_child__refused_without_the_process_pool(e2e):
    proc = e2e.worker("--max-tasks-per-child", "5")
    assert proc.wait(20) == 2
    out = e2e.logs().strip()
    assert "need --pool process" in out and "Traceback" not in out and len(out.splitlines()) == 1


def test_script_that_only_enqueues__exits_quietly_on_every_engine(e2e_any):
    """A plain script leaves its backend open; at exit nothing may print a warning or traceback."""
    script = ("from tests.e2e.jobs_app import add\n"
              "job = add.enqueue(1, 2)\n"
              "print(job.refresh().status)\n")
    done = subprocess.run([sys.executable, "-c", script], env=e2e_any.env(), cwd=e2e_any.tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "queued", done.stderr
    assert done.stderr == ""


def test_metrics__a_worker_serves_its_own_counters_and_memory(e2e):
    port = free_port()
    e2e.worker("--metrics", f"127.0.0.1:{port}")
    jobs = [e2e.enqueue("add", i, 1) for i in range(3)]
    e2e.wait_all(jobs)
    assert all(job.status is Status.SUCCEEDED for job in jobs)

    def scrape() -> str:
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            if 'conveyor_jobs_succeeded_total{queue="default",task="add"} 3.0' in text:
                return text
        return ""

    wait_for(scrape, what="the worker's metrics to count the three jobs")  # counted between claims
    text = scrape()
    assert re.search(r"^process_resident_memory_bytes \d", text, re.M)
    assert 'conveyor_job_duration_seconds_count{queue="default",task="add"} 3.0' in text


def test_metrics__port_taken__one_line_exit_1(e2e):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = e2e.worker("--metrics", str(taken.getsockname()[1]))
        assert proc.wait(20) == 1
    out = e2e.logs().strip().splitlines()
    assert len(out) == 1 and "cannot serve metrics on 127.0.0.1:" in out[0]


def test_sigterm_while_the_app_loads__exit_0(tmp_path):
    """A stop that comes before the worker took anything (a slow import, a deploy that changed
    its mind) ends it cleanly: exit 0, not death by the signal (143)."""
    (tmp_path / "slow_app.py").write_text(
        "import pathlib, time\nfrom conveyor import Conveyor\n"
        f"pathlib.Path({str(tmp_path / 'loading')!r}).touch()\n"
        "time.sleep(3)  # heavy imports\n"
        f"app = Conveyor('sqlite:///{tmp_path}/slow.db')\n")
    proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli", "worker", "--app", "slow_app:app"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20  # a loaded machine may take seconds to get this far
    while not (tmp_path / "loading").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the worker never began importing the app"
        time.sleep(0.01)
    time.sleep(0.2)  # inside the app's import
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out


MISBEHAVIOURS = {  # how -> (status, error type or result)
    "surrogate_result": ("failed", "TypeError"),
    "surrogate_error": ("failed", "ValueError"),
    "huge_int": ("failed", "TypeError"),
    "deep_result": ("failed", "TypeError"),
    "int_keys": ("failed", "TypeError"),
    "sys_exit": ("failed", "SystemExit"),
    "bad_str": ("failed", "BadStr"),
    "fork_exit": ("succeeded", "parent done"),
}


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_task_code_at_its_worst__fails_its_job_alone_and_the_worker_goes_on(e2e, pool):
    worker = e2e.worker("--pool", pool, "--concurrency", "2")
    jobs = {how: e2e.enqueue("misbehave", how) for how in MISBEHAVIOURS}
    e2e.wait_all(jobs.values(), timeout=60)
    for how, (status, detail) in MISBEHAVIOURS.items():
        job = jobs[how].refresh().job
        got = job.result if status == "succeeded" else (job.error or {}).get("type")
        assert (job.status.value, got, job.deliveries) == (status, detail, 1), (how, job.error)
    assert "\\udcff" in jobs["surrogate_error"].job.error["message"]  # stored as text, escaped
    assert e2e.enqueue("misbehave", "fine").wait(timeout=20) == "fine"
    assert worker.poll() is None


def test_nul_characters__refused_at_enqueue_and_a_task_s_own_end_its_job_alone_on_every_engine(e2e_any):
    """U+0000 is valid JSON that PostgreSQL cannot store: one such result made the worker exit
    and the other outcomes of its batch went unrecorded (their jobs ran again and again)."""
    with pytest.raises(InvalidArguments, match="U\\+0000") as refused:
        e2e_any.enqueue("misbehave", "a\x00b")
    assert refused.value.errors == [{"pointer": "#/args/0", "detail": mock.ANY}]
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidArguments, match="nested too deeply"):
        e2e_any.enqueue("misbehave", deep)
    with pytest.raises(ValidationError, match="U\\+0000"):
        e2e_any.enqueue("add", 1, 2, metadata={"note": "\x00"})
    worker = e2e_any.worker("--concurrency", "4")
    hows = ["fine", "nul_result", "fine", "nul_error", "nul_progress", "fine"]
    jobs = e2e_any.client.enqueue_many([("misbehave", (how,), {}, {"max_retries": 0}) for how in hows])
    e2e_any.wait_all(jobs, timeout=60)
    got = [(j.status.value, j.job.deliveries) for j in jobs]
    assert got == [("succeeded", 1), ("failed", 1), ("succeeded", 1), ("failed", 1), ("succeeded", 1),
                   ("succeeded", 1)]
    assert "U+0000" in jobs[1].job.error["message"] and jobs[1].job.error["type"] == "TypeError"
    assert jobs[3].job.error["message"] == "bad byte \\x00 in input"
    assert jobs[4].job.progress["message"] == "half\\x00way"
    assert worker.poll() is None


def test_process_pool__app_cannot_load_in_any_process__jobs_handed_back_and_worker_exits_70(e2e):
    worker = e2e.worker("--pool", "process", "--concurrency", "2", env=e2e.env(TEST_CHILD_IMPORT_FAILS="1"))
    job = e2e.enqueue("add", 1, 2)
    assert worker.wait(30) == 70, e2e.logs()
    stored = job.refresh().job
    assert stored.status is Status.QUEUED and stored.deliveries == 0  # not left running, not counted
    assert "the process pool cannot load the app" in e2e.logs()
    assert e2e.worker().poll() is None and job.wait(timeout=20) == 3  # a healthy worker runs it


def test_async_task_blocking_the_loop__the_worker_says_so_naming_the_task(e2e):
    e2e.worker()
    assert e2e.enqueue("blocks_the_loop", 3.0).wait(timeout=30) == "done"
    wait_for(lambda: "the event loop was blocked for" in e2e.logs(), timeout=5, what="the warning")
    line = next(x for x in e2e.logs().splitlines() if "the event loop was blocked for" in x)
    assert "blocks_the_loop" in line and "asyncio.to_thread" in line


def test_async_task_blocking_the_loop_past_the_visibility_timeout__runs_once_and_the_worker_goes_on(e2e_any):
    """Heartbeats ride on the event loop; while a task blocks it, a thread of the worker keeps its
    leases, so the job is not run again by another worker meanwhile."""
    env = e2e_any.env(TEST_VISIBILITY="2")
    blocking = e2e_any.worker("--no-scheduler", env=env)
    # 4 s: the lease would run out 2 s after the last heartbeat, and the other worker sweeps every 0.5-1 s
    job = e2e_any.enqueue("blocks_the_loop", 4.0)
    wait_for(lambda: recorded(e2e_any.log), what="the job to start")
    other = e2e_any.worker("--no-scheduler", env=env)  # would take the job up once its lease ran out
    assert job.wait(timeout=30) == "done"
    assert [e["pid"] for e in recorded(e2e_any.log)] == [blocking.pid]
    assert job.refresh().job.deliveries == 1
    assert e2e_any.enqueue("add", 1, 2).wait(timeout=20) == 3
    assert blocking.poll() is None and other.poll() is None, e2e_any.logs()


def test_loop_blocked_right_after_a_job_returned__its_lease_is_kept_until_its_outcome_is_recorded(e2e_any):
    env = e2e_any.env(TEST_VISIBILITY="2")
    jobs = [e2e_any.enqueue("done_as_the_loop_blocks", block) for block in (0.0, 4.0)]
    blocking = e2e_any.worker("--no-scheduler", "--concurrency", "2", env=env)
    wait_for(lambda: len(recorded(e2e_any.log)) == 2, what="both jobs to start")
    e2e_any.worker("--no-scheduler", env=env)  # would run the first again once its lease ran out
    e2e_any.wait_all(jobs, timeout=30)
    assert [e["pid"] for e in recorded(e2e_any.log)] == [blocking.pid] * 2
    assert [(j.status, j.job.deliveries) for j in jobs] == [(Status.SUCCEEDED, 1)] * 2


def test_loop_blocked_as_a_pool_thread_leases_a_job__its_lease_is_kept_and_it_runs_once(e2e_any):
    env = e2e_any.env(TEST_VISIBILITY="2")
    e2e_any.worker("--no-scheduler", "--concurrency", "4", env=env)
    job = e2e_any.enqueue("submits_then_blocks", 4.0)
    wait_for(lambda: recorded(e2e_any.log), what="the job to start")
    e2e_any.worker("--no-scheduler", env=env)
    assert job.wait(timeout=30) == "done"
    wait_for(lambda: len(recorded(e2e_any.log)) >= 3, what="the submitted job to end")
    submitted = e2e_any.client.get_job([e for e in recorded(e2e_any.log) if e["event"] == "start"][1]["job"])
    # once its outcome is stored no second run can start; one that did would show in its deliveries
    e2e_any.wait_all([submitted], timeout=10)
    starts = [e for e in recorded(e2e_any.log) if e["event"] == "start"]
    assert len(starts) == 2, starts  # the submitted job ran once (on Redis, leased by a pool thread of `blocking`)
    assert (submitted.status, submitted.job.deliveries) == (Status.SUCCEEDED, 1)


def test_async_task_blocking_the_loop_past_its_timeout__its_lease_is_no_longer_kept(e2e):
    """A loop blocked for good must not hold a job for ever: past the job's time limit its lease
    runs out, and another worker takes the job up as from a dead worker."""
    env = e2e.env(TEST_VISIBILITY="2")
    blocking = e2e.worker("--no-scheduler", env=env)
    e2e.enqueue("blocks_the_loop", 8.0, timeout=1)
    wait_for(lambda: recorded(e2e.log), what="the job to start")
    other = e2e.worker("--no-scheduler", env=env)
    wait_for(lambda: any(e["pid"] == other.pid for e in recorded(e2e.log)), timeout=10, what="the other worker")
    assert recorded(e2e.log)[0]["pid"] == blocking.pid


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_task_logging__formatted_and_levelled_as_the_worker_logs_in_every_pool(e2e, pool):
    e2e.worker("--pool", pool, "--log-level", "INFO")
    pid = e2e.enqueue("logs_info").wait(timeout=30)
    wait_for(lambda: f"task info line from pid {pid}" in e2e.logs(), timeout=5, what="the task's INFO line")
    line = next(x for x in e2e.logs().splitlines() if f"task info line from pid {pid}" in x)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO +tests\.e2e\.jobs_app: ", line), line
