"""The tasks of the chaos soak (``bench.chaos_tasks:app``; ``bench/chaos.py`` drives them).

Every run of a task appends one line when it starts and one when it ends (``ok``, or ``fail``
when it raises) to ``$CHAOS_RUNS/<pid>.jsonl``: one file per worker process, written with one
unbuffered ``write`` per line, so a kill -9 loses at most the line being written. The soak reads
them afterwards to count executions per job and to tie each re-run to a kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from conveyor import Context, Conveyor

QUEUE = "chaos"

app = Conveyor()  # CONVEYOR_URL
app.queue(QUEUE, visibility_timeout=float(os.environ.get("CHAOS_VISIBILITY", "3")))

_fd: tuple[int, int] | None = None  # (pid, file descriptor) of this process's run log


def _record(event: str, ctx: Context) -> None:
    global _fd
    folder = os.environ.get("CHAOS_RUNS")
    if not folder:
        return
    pid = os.getpid()
    if _fd is None or _fd[0] != pid:  # a process-pool child writes a file of its own
        _fd = (pid, os.open(os.path.join(folder, f"{pid}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    line = {"e": event, "job": ctx.job.id, "pid": pid, "ppid": os.getppid(), "t": time.time(),
            "attempt": ctx.job.attempt, "deliveries": ctx.job.deliveries}
    os.write(_fd[1], (json.dumps(line) + "\n").encode())


@app.task(queue=QUEUE)
def quick(ctx: Context) -> None:
    """A no-op."""
    _record("start", ctx)
    _record("ok", ctx)


@app.task(queue=QUEUE)
def nap(ctx: Context, seconds: float) -> float:
    """Sleep in a pool thread."""
    _record("start", ctx)
    time.sleep(seconds)
    _record("ok", ctx)
    return seconds


@app.task(queue=QUEUE)
async def anap(ctx: Context, seconds: float) -> float:
    """Sleep on the worker's event loop."""
    _record("start", ctx)
    await asyncio.sleep(seconds)
    _record("ok", ctx)
    return seconds


@app.task(queue=QUEUE, max_retries=2, backoff=0.2)
def flaky(ctx: Context, failures: int) -> int:
    """Fail the first ``failures`` attempts (at most 2: it then succeeds on its last retry)."""
    _record("start", ctx)
    if ctx.job.attempt <= failures:
        _record("fail", ctx)
        raise RuntimeError(f"attempt {ctx.job.attempt} fails on purpose")
    _record("ok", ctx)
    return ctx.job.attempt


@app.task(queue=QUEUE, max_retries=2, backoff=0.2)
def doomed(ctx: Context) -> None:
    """Fail every attempt: ``failed`` after three."""
    _record("start", ctx)
    _record("fail", ctx)
    raise RuntimeError("fails on purpose")


@app.task(queue=QUEUE)
def step(ctx: Context, n: int) -> int:
    """A link of a dependency chain: fails if a parent's result is missing."""
    _record("start", ctx)
    missing = [p for p in ctx.job.depends_on if p not in ctx.parent_results]
    if missing:
        _record("fail", ctx)
        raise RuntimeError(f"parent results missing: {missing}")
    _record("ok", ctx)
    return n
