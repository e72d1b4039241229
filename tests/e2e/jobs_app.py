"""Tasks used by the end-to-end tests; workers import this as ``tests.e2e.jobs_app:app``."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conveyor import Context, Conveyor

if os.environ.get("TEST_CHILD_IMPORT_FAILS") and multiprocessing.current_process().name != "MainProcess":
    raise RuntimeError("this app cannot load in a pool process (a licence or a GPU only the parent has)")

app = Conveyor()  # CONVEYOR_URL of the test
app.queue("default", visibility_timeout=float(os.environ.get("TEST_VISIBILITY", "30")))
app.queue("crashy", visibility_timeout=1, max_deliveries=3)


def _record(event: str, ctx: Context, **extra: object) -> None:
    """Append one line to $TEST_LOG: which job ran, when, in which process."""
    path = os.environ.get("TEST_LOG")
    if path:
        line = json.dumps({"event": event, "job": ctx.job.id, "pid": os.getpid(), "t": time.time(), **extra})
        with open(path, "a") as f:
            f.write(line + "\n")


@app.task
def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@app.task
async def async_add(ctx: Context, a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


@app.task
def noop(ctx: Context) -> None:
    return None


@app.task(max_retries=3, backoff=0.05)
def flaky(ctx: Context, failures: int) -> str:
    """Fails ``failures`` times (counted in the job's attempt), then succeeds."""
    if ctx.job.attempt <= failures:
        raise RuntimeError(f"attempt {ctx.job.attempt} fails")
    return f"ok after {ctx.job.attempt} attempts"


@app.task(max_retries=1, backoff=0.05)
def always_fails(ctx: Context) -> None:
    raise ValueError("this task always fails")


@app.task
def work(ctx: Context, ms: int) -> int:
    """Sleep ``ms`` milliseconds, recording start and end."""
    _record("start", ctx)
    time.sleep(ms / 1000)
    _record("end", ctx)
    return ms


@app.task
def sleeper(ctx: Context, seconds: float) -> str:
    """Sleep cooperatively: notices a cancel within 50 ms."""
    _record("start", ctx)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.05)
    _record("end", ctx)
    return "slept"


@app.task
def stubborn(ctx: Context, seconds: float) -> str:
    """Sleeps and ignores cancellation and time limits."""
    _record("start", ctx)
    time.sleep(seconds)
    _record("end", ctx)
    return "done"


@app.task(queue="crashy")
def suicide(ctx: Context) -> None:
    """Kills its own process, as a segfault or the OOM killer would."""
    _record("start", ctx)
    os._exit(13)


@app.task
def whoami(ctx: Context, seconds: float) -> int:
    """Sleep (ignoring cancels), then return the worker's pid: shows whose outcome was kept."""
    _record("start", ctx)
    time.sleep(seconds)
    _record("end", ctx)
    return os.getpid()


@app.task(max_retries=0)
def progress_object(ctx: Context) -> None:
    ctx.progress(0.5, object())  # type: ignore[arg-type]  # a message that is not text


@app.task
def progress_steps(ctx: Context, steps: int) -> int:
    for i in range(steps):
        ctx.progress((i + 1) / steps, f"step {i + 1}")
        time.sleep(0.1)
    return steps


@app.task
def record_priority(ctx: Context, tag: str) -> str:
    _record("run", ctx, tag=tag)
    return tag


@app.task
def parents(ctx: Context) -> dict[str, object]:
    return dict(ctx.parent_results)


def recorded(path: str | Path) -> list[dict[str, object]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


@app.task(concurrency_limit=2)
def limited_sleep(ctx: Context, seconds: float) -> None:
    """At most 2 run at once across every worker: records its start and end."""
    start = time.time()
    time.sleep(seconds)
    _record("limited", ctx, start=start, end=time.time())


@app.task(rate_limit="5/s")
def rate_limited(ctx: Context, n: int) -> int:
    """At most 5 start per second across every worker."""
    _record("rated", ctx, start=time.time())
    return n


@app.task
async def async_sleeper(ctx: Context, seconds: float) -> str:
    """An async task: a cancel arrives as CancelledError at its next await."""
    _record("start", ctx)
    await asyncio.sleep(seconds)
    _record("end", ctx)
    return "slept"


@app.task(max_retries=0, timeout=0.5)
def overrun(ctx: Context, seconds: float) -> str:
    """Ignores its 0.5 s time limit (sleeps without looking at ctx)."""
    _record("start", ctx)
    time.sleep(seconds)
    _record("end", ctx)
    return "too late"


@app.task(max_retries=0, timeout=0.5)
async def async_overrun(ctx: Context, seconds: float) -> str:
    _record("start", ctx)
    await asyncio.sleep(seconds)
    _record("end", ctx)
    return "too late"


@app.task(max_retries=0)
async def async_stubborn(ctx: Context, seconds: float) -> str:
    """Catches its cancel and carries on: time limits and stops must not wait for it."""
    _record("start", ctx)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(deadline - time.monotonic())
        except asyncio.CancelledError:
            continue
    _record("end", ctx)
    return "done"


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def _nested(depth: int) -> list[object]:
    nested: list[object] = []
    for _ in range(depth):
        nested = [nested]
    return nested


def _raise(exc: BaseException) -> object:
    raise exc


def _fork_exit() -> str:  # the fork returns into the pool's code by way of SystemExit
    pid = os.fork()
    if pid == 0:
        sys.exit(0)
    os.waitpid(pid, 0)
    return "parent done"


def _progress_with_nul(ctx: Context) -> str:
    ctx.progress(0.5, "half\x00way")
    time.sleep(0.5)  # recorded while it runs (a report the job's end overtakes is dropped)
    return "fine"


#: how -> what the task does; each way must end its job alone, never the worker
MISBEHAVIOURS: dict[str, Callable[[Context], object]] = {
    "surrogate_result": lambda ctx: os.fsdecode(b"report-\xff.csv"),  # a non-UTF-8 file name
    "surrogate_error": lambda ctx: _raise(ValueError(os.fsdecode(b"cannot open report-\xff.csv"))),
    "huge_int": lambda ctx: 10**5000,
    "int_keys": lambda ctx: {1: "a"},
    "sys_exit": lambda ctx: sys.exit(3),
    "bad_str": lambda ctx: _raise(BadStr()),
    "deep_result": lambda ctx: _nested(5000),
    "nul_result": lambda ctx: {"data": "a\x00b"},
    "nul_error": lambda ctx: _raise(ValueError("bad byte \x00 in input")),
    "nul_progress": _progress_with_nul,
    "fork_exit": lambda ctx: _fork_exit(),
}


@app.task(max_retries=0)
def misbehave(ctx: Context, how: str) -> object:
    """Task code at its worst (``MISBEHAVIOURS``), or "fine"."""
    act = MISBEHAVIOURS.get(how)
    return "fine" if act is None else act(ctx)


@app.task
async def blocks_the_loop(ctx: Context, seconds: float) -> str:
    _record("start", ctx)
    time.sleep(seconds)  # the mistake: blocking code in an async task
    return "done"


@app.task
async def done_as_the_loop_blocks(ctx: Context, block: float) -> str:
    """Two of these, started together, wake in one turn of the loop: one returns (its outcome is
    not recorded yet) as the other blocks the loop for ``block`` seconds."""
    _record("start", ctx)
    await asyncio.sleep(0.3)
    time.sleep(block)
    return "done"


@app.task
async def submits_then_blocks(ctx: Context, seconds: float) -> str:
    """Submits a ``whoami`` job (a pool thread waiting for work leases it) and blocks the loop."""
    _record("start", ctx)
    await asyncio.sleep(0.1)  # the worker's idle slots wait for work meanwhile
    await whoami.enqueue_async(seconds - 1)
    time.sleep(seconds)
    return "done"


@app.task
def logs_info(ctx: Context) -> int:
    logging.getLogger("tests.e2e.jobs_app").info("task info line from pid %d", os.getpid())
    return os.getpid()
