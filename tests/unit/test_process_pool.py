"""The process pool with real child processes: results, errors, progress, deaths, timeouts, stops."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor.core.app import Conveyor
from conveyor.core.context import Context, JobCancelled
from conveyor.core.job import Job, error_info
from conveyor.loader import load_app
from conveyor.worker.pools import ProcessDied
from conveyor.worker.process_pool import ProcessPool

BOUND = 5.0  # no wait in these tests may last longer

APP = """
import os
import time

import pydantic

from conveyor import Context, Conveyor


class Size(pydantic.BaseModel):
    width: int

app = Conveyor("sqlite:///{db}")


class PaymentDeclined(Exception):
    pass


@app.task
def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@app.task
def whoami(ctx: Context) -> dict:
    return {{"pid": os.getpid(), "job": ctx.job.id, "parents": dict(ctx.parent_results)}}


@app.task
def area(ctx: Context, size: Size) -> int:
    assert isinstance(size, Size), type(size)  # the child prepares typed arguments from JSON
    return size.width * 2


@app.task
def boom(ctx: Context, message: str) -> None:
    raise ValueError(message)


@app.task
def declined(ctx: Context) -> None:
    raise PaymentDeclined("card 4242 declined")


@app.task
def steps(ctx: Context, n: int) -> str:
    for i in range(1, n + 1):
        ctx.progress(i / n, f"step {{i}}")
    return "done"


@app.task
def die(ctx: Context, code: int) -> None:
    os._exit(code)


@app.task
def nap(ctx: Context, seconds: float) -> float:
    ctx.progress(0, str(os.getpid()))  # tells the test which process runs it
    time.sleep(seconds)
    return seconds


@app.task
def not_json(ctx: Context) -> object:
    return {{1, 2}}


LEAKED = []


@app.task
def leak(ctx: Context, mib: int) -> int:
    LEAKED.append(b"x" * (mib * 2**20))  # kept: a leak in the task's code
    return os.getpid()
"""


@pytest.fixture(scope="module")
def app_spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("pool_app")
    module = f"pool_app_{uuid.uuid4().hex[:8]}"
    (root / f"{module}.py").write_text(textwrap.dedent(APP.format(db=root / "app.db")))
    sys.path.insert(0, str(root))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), old) if p)
    yield f"{module}:app"
    sys.path.remove(str(root))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def app(app_spec: str) -> Conveyor:
    return load_app(app_spec)


@pytest.fixture
async def pool(app_spec: str) -> AsyncIterator[ProcessPool]:
    pool = ProcessPool(2, app_spec)
    yield pool
    await asyncio.wait_for(pool.close(), BOUND)


class Call:
    """One job for the pool: its context, and the progress it reported."""

    def __init__(self, app: Conveyor, task: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> None:
        self.task = app.tasks[task]
        self.job = Job(id=str(uuid.uuid4()), task=task, args=list(args), kwargs=kwargs)
        self.progress: list[dict[str, Any]] = []
        self.ctx = Context(self.job, self.progress.append, {"parent-1": 41})
        self.timeout = timeout

    async def run(self, pool: ProcessPool) -> Any:
        args, kwargs = self.task.prepare(self.job.args, self.job.kwargs)
        return await asyncio.wait_for(pool.run(self.task, args, kwargs, self.ctx, self.timeout), BOUND)

    async def started(self) -> int:
        """Wait for the ``nap`` task to report its process id."""
        deadline = time.monotonic() + BOUND
        while not self.progress:
            assert time.monotonic() < deadline, "the job did not start"
            await asyncio.sleep(0.01)
        return int(self.progress[0]["message"])


async def gone(pid: int) -> bool:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_result__round_trip_with_job_and_parent_results(pool: ProcessPool, app: Conveyor) -> None:
    assert await Call(app, "add", 2, b=3).run(pool) == 5
    assert await Call(app, "area", size={"width": 21}).run(pool) == 42
    call = Call(app, "whoami")
    info = await call.run(pool)
    assert info["job"] == call.job.id
    assert info["parents"] == {"parent-1": 41}
    assert info["pid"] != os.getpid()

    started = time.perf_counter()
    for i in range(100):
        assert await Call(app, "add", i, b=1).run(pool) == i + 1
    per_job = (time.perf_counter() - started) / 100
    print(f"process pool round trip: {per_job * 1e3:.2f} ms per job")
    assert per_job < 0.05


async def test_error__type_message_and_child_traceback_come_back(pool: ProcessPool, app: Conveyor) -> None:
    with pytest.raises(Exception) as caught:
        await Call(app, "boom", "bad input").run(pool)
    try:
        raise caught.value
    except Exception as exc:
        error = error_info(exc, traceback.format_exc())
    assert error["type"] == "ValueError"
    assert error["message"] == "bad input"
    assert "in boom" in error["traceback"]  # the child's frames
    assert "raise ValueError(message)" in error["traceback"]

    with pytest.raises(Exception) as caught:
        await Call(app, "declined").run(pool)
    assert type(caught.value).__name__ == "PaymentDeclined"
    assert str(caught.value) == "card 4242 declined"

    with pytest.raises(Exception, match=r"not JSON \(Object of type set is not JSON serializable\)") as caught:
        await Call(app, "not_json").run(pool)
    assert type(caught.value).__name__ == "TypeError"
    assert await Call(app, "add", 1, b=1).run(pool) == 2  # the same children go on


async def test_progress__reaches_the_parent_context(pool: ProcessPool, app: Conveyor) -> None:
    call = Call(app, "steps", 4)
    assert await call.run(pool) == "done"
    assert call.progress == [{"fraction": i / 4, "message": f"step {i}"} for i in range(1, 5)]


async def test_died__process_died_and_the_pool_goes_on(pool: ProcessPool, app: Conveyor) -> None:
    with pytest.raises(ProcessDied, match=r"died \(exit code 3\)"):
        await Call(app, "die", 3).run(pool)
    # both slots work again (one on a replacement child)
    t0 = time.monotonic()
    results = await asyncio.gather(Call(app, "nap", 0.3).run(pool), Call(app, "nap", 0.3).run(pool))
    assert results == [0.3, 0.3]
    assert time.monotonic() - t0 < 2.5  # includes the replacement's start-up


async def test_timeout__kills_the_child_and_the_pool_goes_on(pool: ProcessPool, app: Conveyor) -> None:
    await Call(app, "add", 0, b=0).run(pool)  # warm
    call = Call(app, "nap", 30, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await call.run(pool)
    assert time.monotonic() - t0 < 1.0
    assert await gone(await call.started())
    assert await Call(app, "add", 2, b=2).run(pool) == 4


async def test_stop__kills_the_running_job_promptly(pool: ProcessPool, app: Conveyor) -> None:
    # a cancelled job: run() raises JobCancelled
    call = Call(app, "nap", 30)
    running = asyncio.create_task(call.run(pool))
    pid = await call.started()
    call.ctx.request_cancel()
    t0 = time.monotonic()
    pool.stop(call.job.id)
    with pytest.raises(JobCancelled):
        await running
    assert time.monotonic() - t0 < 0.2
    assert await gone(pid)

    # the worker abandons a job: it cancels run() and stops the job
    call = Call(app, "nap", 30)
    running = asyncio.create_task(call.run(pool))
    pid = await call.started()
    running.cancel()
    pool.stop(call.job.id)
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await gone(pid)

    # stop() of a job that is not running is harmless; the pool still has both slots
    pool.stop("no-such-job")
    assert await asyncio.gather(Call(app, "add", 1, b=2).run(pool), Call(app, "add", 3, b=4).run(pool)) == [3, 7]


async def test_concurrency__two_children_run_two_jobs_at_once(pool: ProcessPool, app: Conveyor) -> None:
    await asyncio.gather(Call(app, "add", 0, b=0).run(pool), Call(app, "add", 0, b=0).run(pool))  # both ready
    t0 = time.monotonic()
    calls = [Call(app, "nap", 0.5), Call(app, "nap", 0.5)]
    assert await asyncio.gather(*(c.run(pool) for c in calls)) == [0.5, 0.5]
    assert time.monotonic() - t0 < 0.8
    assert len({c.progress[0]["message"] for c in calls}) == 2  # two processes


async def test_close__kills_children_without_waiting(app_spec: str, app: Conveyor) -> None:
    pool = ProcessPool(1, app_spec)
    call = Call(app, "nap", 30)
    running = asyncio.create_task(call.run(pool))
    pid = await call.started()
    t0 = time.monotonic()
    await asyncio.wait_for(pool.close(), BOUND)
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(ProcessDied):
        await running
    assert await gone(pid)


async def pids_of(app: Conveyor, pool: ProcessPool, *mibs: int) -> list[int]:
    """Run ``leak`` jobs one after another; the process that ran each."""
    return [await Call(app, "leak", mib).run(pool) for mib in mibs]


async def test_max_tasks__a_process_is_replaced_after_that_many_jobs(app_spec: str, app: Conveyor) -> None:
    pool = ProcessPool(1, app_spec, max_tasks=2)
    try:
        pids = await pids_of(app, pool, 0, 0, 0, 0, 0)
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert len(set(pids)) == 3
        assert await gone(pids[0]) and await gone(pids[2])  # they exited, nothing lingers
    finally:
        await asyncio.wait_for(pool.close(), BOUND)


async def test_max_memory__a_process_that_grew_past_it_is_replaced_after_its_job(
        app_spec: str, app: Conveyor) -> None:
    pool = ProcessPool(1, app_spec, max_memory=300 * 2**20)
    try:
        small = await pids_of(app, pool, 1, 1, 1)
        assert len(set(small)) == 1  # far below the limit: one process
        grown = await pids_of(app, pool, 400, 1)  # the first job succeeds, then its process goes
        assert grown[0] == small[0] != grown[1]
        assert await gone(grown[0])
    finally:
        await asyncio.wait_for(pool.close(), BOUND)


async def test_retiring__no_job_waits_long_or_fails_while_processes_turn_over(
        app_spec: str, app: Conveyor) -> None:
    pool = ProcessPool(2, app_spec, max_tasks=1)
    try:
        await asyncio.gather(Call(app, "add", 0, b=0).run(pool), Call(app, "add", 0, b=0).run(pool))
        results = await asyncio.gather(*(Call(app, "add", i, b=1).run(pool) for i in range(8)))
        assert results == [i + 1 for i in range(8)]
    finally:
        await asyncio.wait_for(pool.close(), BOUND)
