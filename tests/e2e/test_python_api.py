"""The Python API of SPEC §5 against a real SQLite file, with an in-process burst worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor import Context, Conveyor, InvalidArguments, JobFailed
from conveyor.core.errors import ValidationError
from conveyor.core.job import Status
from conveyor.worker import Worker


@pytest.fixture
def app(tmp_path):
    app = Conveyor(f"sqlite:///{tmp_path}/api.db")

    @app.task(queue="media", max_retries=0)
    def transcode(ctx: Context, path: str, height: int) -> str:
        if height == 0:
            raise ValueError("height must be positive")
        ctx.progress(0.5, "encoding")
        return f"out/{height}p.mp4"

    @app.task
    async def notify(ctx: Context, path: str) -> list[str]:
        return sorted(ctx.parent_results.values())

    yield app
    app.close()


def drain(app: Conveyor) -> None:
    asyncio.run(Worker(app, burst=True, scheduler=False).run())


def test_enqueue__returns_at_once_queued_then_wait_gives_the_result(app):
    job = app.tasks["transcode"].enqueue("in/cat.mp4", height=480)
    assert job.status is Status.QUEUED and job.job.queue == "media"
    drain(app)
    assert job.wait(timeout=5) == "out/480p.mp4"
    assert job.progress == {"fraction": 0.5, "message": "encoding"}


def test_enqueue_many_and_depends_on__fan_in_reads_parent_results(app):
    transcode, notify = app.tasks["transcode"], app.tasks["notify"]
    sizes = transcode.enqueue_many([{"path": "in/cat.mp4", "height": h} for h in (360, 480, 720)])
    done = notify.enqueue("in/cat.mp4", depends_on=sizes)
    assert done.status is Status.WAITING
    drain(app)
    assert done.wait(timeout=5) == ["out/360p.mp4", "out/480p.mp4", "out/720p.mp4"]


def test_enqueue_async__works_inside_a_running_loop(app):
    async def submit():
        return await app.tasks["transcode"].enqueue_async("a.mp4", 720)

    job = asyncio.run(submit())
    drain(app)
    assert app.get_job(job.id).wait(timeout=5) == "out/720p.mp4"


def test_wait__a_failed_job_raises_with_its_error(app):
    job = app.tasks["transcode"].enqueue("a.mp4", 0)
    drain(app)
    with pytest.raises(JobFailed) as err:
        job.wait(timeout=5)
    assert err.value.error["type"] == "ValueError" and err.value.status == "failed"


def test_wait__times_out_while_no_worker_runs(app):
    job = app.tasks["transcode"].enqueue("a.mp4", 360)
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.2)


@pytest.mark.parametrize("timeout", [float("nan"), "5", True])
def test_wait__a_timeout_that_is_no_number__refused_at_once(app, timeout):
    """NaN waited forever (no deadline compares true), "5" raised a bare TypeError."""
    job = app.tasks["transcode"].enqueue("a.mp4", 360)
    with pytest.raises(ValidationError, match="timeout must be None or a number of seconds"):
        job.wait(timeout=timeout)


def test_get_job__unknown_or_malformed_id_is_none(app):
    assert app.get_job("0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e") is None
    assert app.get_job("not-an-id") is None


def test_idempotency_key__same_key_returns_the_same_job(app):
    first = app.tasks["transcode"].enqueue("a.mp4", 360, key="upload-17")
    again = app.tasks["transcode"].enqueue("a.mp4", 360, key="upload-17")
    assert again.id == first.id and first.created and not again.created


def test_non_json_arguments__refused_at_enqueue_naming_the_argument(app):
    with pytest.raises(InvalidArguments) as err:
        app.tasks["transcode"].enqueue(dt.datetime.now(), 360)
    assert err.value.errors[0]["pointer"] == "#/args/0"
    assert "path" in str(err.value)


def test_cancel__a_queued_job_is_cancelled_and_never_runs(app):
    job = app.tasks["transcode"].enqueue("a.mp4", 360)
    assert job.cancel().status is Status.CANCELLED
    drain(app)
    assert job.refresh().status is Status.CANCELLED and job.job.started_at is None


def test_depends_on_by_name__child_reads_parent_results_by_name(app):
    @app.task
    def compare(ctx: Context) -> dict[str, str]:
        return {"small": ctx.parent_results["small"], "large": ctx.parent_results["large"]}

    transcode = app.tasks["transcode"]
    small, large = transcode.enqueue("a.mp4", 360), transcode.enqueue("a.mp4", 720)
    job = compare.enqueue(depends_on={"small": small, "large": large})
    assert job.job.depends_on == [small.id, large.id]
    drain(app)
    assert job.wait(timeout=5) == {"small": "out/360p.mp4", "large": "out/720p.mp4"}


#: The start of a user's script: an app on the engine of ``sys.argv[1]``, with one task ``f``.
SCRIPT_HEAD = """
import asyncio, os, sys
from conveyor import Context, Conveyor

app = Conveyor(sys.argv[1])

@app.task
def f(ctx: Context) -> None:
    pass
"""


def run_script(tmp_path: Path, body: str, url: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_HEAD + body)
    return subprocess.run([sys.executable, str(script), url], capture_output=True, text=True, timeout=120)


SCRIPT_MIXING_SYNC_AND_ASYNC = """
async def main() -> None:
    handle = await f.enqueue_async()
    print(app.get_job(handle.id).status.value)  # a sync call inside the loop: the portal's own loop
    await app.aclose()

asyncio.run(main())
"""


def test_script__sync_call_inside_asyncio_run__exits_at_once_and_quietly(tmp_path):
    """At exit the portal's loop was stopped before the app closed its backend on it: the close
    waited 6 s for a loop that no longer ran, then warned that it was never awaited."""
    started = time.monotonic()
    done = run_script(tmp_path, SCRIPT_MIXING_SYNC_AND_ASYNC, f"sqlite:///{tmp_path}/mixed.db")
    assert (done.returncode, done.stdout, done.stderr) == (0, "queued\n", "")
    assert time.monotonic() - started < 4


SCRIPT_AN_ASYNCIO_RUN_PER_CALL = """
async def submit() -> str:
    return (await f.enqueue_async()).status.value

def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))

print(asyncio.run(submit()))
before = open_files()
for _ in range(40):  # no app.aclose(): asyncio.run ends each loop
    asyncio.run(submit())
print(open_files() - before)
"""


def test_script__an_asyncio_run_per_call_without_aclose__leaves_no_connection_and_says_nothing(e2e_any, tmp_path):
    """Each asyncio.run opened the engine on its loop and the app kept it (PostgreSQL: 'too many
    clients' after about 90 calls); forgetting them instead printed 'Task was destroyed but it is
    pending!' for a pool's tasks. asyncio.run now closes them as its loop ends."""
    done = run_script(tmp_path, SCRIPT_AN_ASYNCIO_RUN_PER_CALL, e2e_any.url)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    first, grown = done.stdout.split()
    assert first == "queued" and int(grown) <= 8  # a few not yet collected, not one per call (40)
