"""Where task code runs: on the event loop (async tasks), in threads, or in processes.

A pool runs one call and returns its value or raises its exception. Time limits and
cancellation are the pool's business because only it knows how to stop its kind of work:
the loop cancels a coroutine, a process pool kills the child, a thread cannot be stopped
(its job is settled at once and the thread's late outcome is dropped: fencing).
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
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
    its slot is freed at once and its outcome is dropped.

    Threads hand results back in batches: the first completion schedules one callback on
    the loop that settles every completion queued by then, so a burst of short jobs costs
    one loop wake-up instead of one per job.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._calls: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = collections.deque()
        self._wake_pending = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], ctx: Context, timeout: float | None
    ) -> Any:
        self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = self._loop.create_future()
        self._submit(future, lambda: task.fn(ctx, *args, **kwargs))
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            ctx.request_cancel()  # a cooperative task stops at its next raise_if_cancelled()
            raise

    def _submit(self, future: asyncio.Future[Any], call: Callable[[], Any]) -> None:
        with self._lock:
            # a thread per job in flight, up to size (+ those outliving a time limit)
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            thread = threading.Thread(target=self._serve, name=f"conveyor-job-{len(self._threads)}", daemon=False)
            self._threads.append(thread)
            thread.start()
        self._calls.put((future, call))

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            future, call = item
            try:
                result, error = call(), None
            except BaseException as exc:
                result, error = None, exc
            self._done.append((future, result, error))
            with self._lock:
                self._idle += 1
                wake = not self._wake_pending
                self._wake_pending = True
            if wake and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self._lock:
            self._wake_pending = False
        while self._done:
            future, result, error = self._done.popleft()
            if future.done():
                continue  # the job was settled already (time limit, cancel, lease lost)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def stop(self, job_id: str) -> None:
        return None  # threads cannot be stopped; the worker tells the task through ctx.cancelled

    async def close(self) -> None:
        for _ in self._threads:
            self._calls.put(None)
