"""Real worker processes on RabbitMQ (job records in a SQLite store): kill -9, delivery limit."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.core.job import Status
from tests.e2e.conftest import Env, wait_for, workers_until_terminal
from tests.e2e.jobs_app import recorded


@pytest.fixture
def amqp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("CONVEYOR_STORE_URL", f"sqlite:///{tmp_path}/store.db")
    monkeypatch.setenv("CONVEYOR_URL", url := f"amqp://guest:guest@127.0.0.1:5672/?prefix=e2e_{uuid.uuid4().hex[:10]}")
    env = Env(tmp_path)
    env.url = url
    env.client.close()
    env.client = type(env.client)(url)
    from tests.e2e import jobs_app

    env.client.tasks = dict(jobs_app.app.tasks)
    env.client.queue_declarations = dict(jobs_app.app.queue_declarations)
    yield env
    env.stop()

    async def drop() -> None:
        from conveyor.backends import create_backend

        b = create_backend(url)
        await b.open()
        await b.drop()  # type: ignore[attr-defined]
        await b.close()

    asyncio.run(drop())
    env.client.close()


def test_round_trip__jobs_succeed(amqp: Env) -> None:
    amqp.worker("--concurrency", "4")
    jobs = [amqp.enqueue("add", i, 1) for i in range(20)]
    amqp.wait_all(jobs, timeout=30)
    assert [j.result for j in jobs] == [i + 1 for i in range(20)]


def test_kill_9__every_job_still_succeeds_and_redelivery_is_prompt(amqp: Env) -> None:
    env = amqp.env(TEST_VISIBILITY="2")
    first = amqp.worker("--concurrency", "8", env=env)
    jobs = amqp.client.enqueue_many([("work", (20,), {}, {}) for _ in range(300)])
    wait_for(lambda: len(recorded(amqp.log)) > 150, what="jobs to start")
    first.send_signal(signal.SIGKILL)
    killed_at = time.time()
    first.wait(5)
    amqp.worker("--concurrency", "8", env=env)
    amqp.wait_all(jobs, timeout=60)
    assert all(j.status is Status.SUCCEEDED for j in jobs)
    events = recorded(amqp.log)
    starts = collections.Counter(e["job"] for e in events if e["event"] == "start")
    duplicates = {job_id for job_id, n in starts.items() if n > 1}
    assert len(starts) == 300
    assert len(duplicates) <= 8  # only the jobs that were running at the kill run twice
    restarts = [e["t"] for e in events if e["event"] == "start" and e["job"] in duplicates and e["t"] > killed_at]
    assert all(t - killed_at < 2 + 5 + 3 for t in restarts)  # lease + 5 s (+ the new worker's start-up)


def test_process_killing_task__fails_after_max_deliveries_without_looping(amqp: Env) -> None:
    job = amqp.enqueue("suicide")
    workers_until_terminal(amqp, job, "--queues", "crashy")
    assert job.status is Status.FAILED
    assert job.error["type"] == "DeliveryLimitExceeded"
    assert job.job.deliveries == 3
    assert len([e for e in recorded(amqp.log) if e["event"] == "start"]) == 3


SCRIPT = """
import asyncio, sys
from conveyor import Conveyor
app = Conveyor(sys.argv[1])
async def main():
    print(await app.get_job_async("01a24e3f-a275-72da-8605-48e22f4f1fe5"))
    await app.aclose()
asyncio.run(main())
"""


def test_asyncio_run_script__aclose__exits_without_warnings(tmp_path: Path) -> None:
    url = f"amqp://guest:guest@127.0.0.1:5672/?prefix=cvaclose_{uuid.uuid4().hex[:8]}"
    env = {"CONVEYOR_STORE_URL": f"sqlite:///{tmp_path}/store.db", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, url], capture_output=True, text=True, timeout=60,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "None"
    assert done.stderr == "", done.stderr  # no "Task was destroyed but it is pending", no traceback
