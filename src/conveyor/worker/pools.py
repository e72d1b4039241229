"""Where task code runs: on the event loop (async tasks), in threads, or in processes.

A pool runs one call and returns its value or raises its exception. Time limits and
cancellation are the pool's business because only it knows how to stop its kind of work:
the loop cancels a coroutine, a process pool kills the child, a thread cannot be stopped
(its job is settled at once and the thread's late outcome is dropped: fencing).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Protocol

from conveyor.core.context import Context
from conveyor.core.task import Task


class ProcessDied(Exception):
    """The process running the job died (killed, crashed, out of memory)."""


class Pool(Protocol):
    """Runs sync task code for a worker."""

    async def run(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], ctx: Context, timeout: float | None
    ) -> Any:
        """The task's return value; raises what it raised, ``TimeoutError`` past ``timeout``."""

    def stop(self, job_id: str) -> None:
        """Stop the job's code if this pool can (cancel or kill); best effort."""

    async def close(self) -> None:
        """Release the pool without waiting for code that cannot be stopped."""


async def run_async(task: Task, args: list[Any], kwargs: dict[str, Any], ctx: Context, timeout: float | None) -> Any:
    """Run an ``async def`` task on the running loop under its time limit."""
    async with asyncio.timeout(timeout):
        return await task.fn(ctx, *args, **kwargs)


class ThreadPool:
    """Sync tasks in threads. A timed-out or cancelled thread keeps running until it returns;
    its slot is freed at once and its outcome is dropped."""

    def __init__(self, size: int) -> None:
        # headroom: threads that outlive their job (timeouts) must not starve new jobs
        self._executor = concurrent.futures.ThreadPoolExecutor(size + 16, thread_name_prefix="conveyor-job")

    async def run(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], ctx: Context, timeout: float | None
    ) -> Any:
        future = asyncio.get_running_loop().run_in_executor(self._executor, lambda: task.fn(ctx, *args, **kwargs))
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            ctx.request_cancel()  # a cooperative task stops at its next raise_if_cancelled()
            raise

    def stop(self, job_id: str) -> None:
        return None  # threads cannot be stopped; the worker tells the task through ctx.cancelled

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
