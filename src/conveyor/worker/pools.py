"""Where task code runs: on the event loop (async tasks), in threads, or in processes.

A pool runs one call and returns its value or raises its exception. Time limits and
cancellation are the pool's business because only it knows how to stop its kind of work:
the loop cancels a coroutine, a process pool kills the child, a thread cannot be stopped
(its job is settled at once and the thread's late outcome is dropped: fencing; but the thread
keeps its worker slot until it returns: ``ThreadPool.give_up``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

from conveyor.core.context import Context, JobCancelled
from conveyor.core.task import Task

log = logging.getLogger(__name__)


class ProcessDied(Exception):
    """The process running the job died (killed, crashed, out of memory)."""


class PoolBroken(Exception):
    """The pool cannot start a process that loads the app: no job can run here (its job is
    handed back, and the worker stops)."""


class Pool(Protocol):
    """Runs sync task code for a worker."""

    async def run(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], ctx: Context, timeout: float | None
    ) -> Any:
        """The task's return value; raises what it raised, ``TimeoutError`` past ``timeout``."""

    def stop(self, job_id: str) -> None:
        """Stop the job's code if this pool can (cancel or kill); best effort."""

    @property
    def overrunning(self) -> int:
        """Calls whose job was settled while their code still runs (it cannot be stopped): each
        keeps a worker slot until it returns."""

    async def close(self) -> None:
        """Release the pool without waiting for code that cannot be stopped."""


#: Seconds a timed-out coroutine gets to end once cancelled (its ``finally`` blocks, say); one that
#: swallows the cancel and goes on is left behind after that, like a thread, and its job fails.
ABANDON_AFTER = 1.0
#: Coroutines left behind (they ignored their cancel): the worker's exit does not wait for them.
LEFT_BEHIND: set[asyncio.Task[Any]] = set()


async def run_async(task: Task, args: list[Any], kwargs: dict[str, Any], ctx: Context, timeout: float | None) -> Any:
    """Run an ``async def`` task on the running loop under its time limit.

    With a limit the coroutine runs as a task of its own, so that the limit holds even against
    code that catches ``CancelledError`` and carries on (``asyncio.timeout`` would wait for it)."""
    if timeout is None:
        return await task.fn(ctx, *args, **kwargs)
    inner = asyncio.ensure_future(task.fn(ctx, *args, **kwargs))
    try:
        done, _ = await asyncio.wait({inner}, timeout=timeout)
    except asyncio.CancelledError:  # the job was cancelled, its lease lost, or it is handed back
        abandon(inner)
        raise
    if done:
        return inner.result()
    inner.cancel()
    await asyncio.wait({inner}, timeout=ABANDON_AFTER)
    abandon(inner)
    raise TimeoutError


def exit_forked_copy(error: BaseException | None) -> NoReturn:
    """End a copy of the process that task code forked and that returned (or raised) into the
    pool's code instead of exiting: it must not run other jobs nor report on the worker's behalf."""
    code = error.code if isinstance(error, SystemExit) else (1 if error is not None else 0)
    os._exit(code if isinstance(code, int) else 1)


def abandon(inner: asyncio.Task[Any]) -> None:
    """Cancel a job's coroutine and stop waiting for it (it may ignore the cancel); whatever it
    ends with later is dropped (the job was settled: fencing)."""
    inner.cancel()
    if not inner.done():
        LEFT_BEHIND.add(inner)
    inner.add_done_callback(_dropped)


def _dropped(inner: asyncio.Task[Any]) -> None:
    LEFT_BEHIND.discard(inner)
    if not inner.cancelled():
        inner.exception()  # retrieved: asyncio would log "exception was never retrieved"


class Call:
    """One piece of sync work for ``ThreadPool.start``: ``run`` in a thread, then ``finished``
    with its value or exception on the loop. ``key`` groups calls of one kind (the task), whose
    recent run time decides whether they may share a thread hand-off; a call whose ``ctx`` is
    cancelled before a thread picks it up is skipped. ``run`` may set ``then``: a call that the
    same thread runs next, once the loop has been sent this one's result (an idle worker's wait
    runs the job it leased, with no hand-off to another thread)."""

    __slots__ = ("ctx", "key", "returned", "then")

    def __init__(self, ctx: Context | None, key: object) -> None:
        self.ctx = ctx
        self.key = key
        self.then: Call | None = None
        #: set by the thread once it ran (or skipped) the call, before the loop hears of it
        self.returned = False

    def run(self) -> Any:
        raise NotImplementedError

    def finished(self, result: Any, error: BaseException | None) -> None:
        raise NotImplementedError


class _FutureCall(Call):
    """A call whose result goes to a future (``ThreadPool.run``)."""

    __slots__ = ("fn", "future")

    def __init__(self, ctx: Context, key: object, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        super().__init__(ctx, key)
        self.fn = fn
        self.future = future

    def run(self) -> Any:
        return self.fn()

    def finished(self, result: Any, error: BaseException | None) -> None:
        if self.future.done():
            return  # the job was settled already (time limit, cancel, lease lost)
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


#: What ``_serve`` reports of a call given up on that it skipped (never ran).
_SKIPPED = JobCancelled("settled before it started")


class _Group:
    """Calls handed to one thread to run back to back; idle threads may take from it too."""

    __slots__ = ("calls", "timer")

    def __init__(self, calls: list[Call]) -> None:
        self.calls = collections.deque(calls)
        self.timer: asyncio.TimerHandle | None = None


class ThreadPool:
    """Sync tasks in threads. A timed-out or cancelled thread keeps running until it returns:
    its job is settled at once and its outcome is dropped, but it counts as ``overrunning`` (and
    so keeps its worker slot) until it returns; ``on_returned`` is then called on the loop.

    A thread hand-off (waking a thread, then the loop again) costs far more than a no-op
    task, and every woken thread fights the loop for the GIL. So calls of a task whose recent
    runs were short enough are handed to one thread as a group that it runs back to back,
    while the group's expected run time stays within ``GROUP_BUDGET``; calls of a slow or not
    yet measured task each get a thread of their own. If some calls of a group have still not
    started after ``GROUP_DEADLINE`` (a normally quick task was slow this time), idle threads
    are woken to take them: no call waits behind another for longer than that.

    Threads hand results back in batches: the first completion schedules one callback on
    the loop that settles every completion queued by then, so a burst of short jobs costs
    one loop wake-up instead of one per job.
    """

    #: Seconds of expected run time that calls may share one thread hand-off for.
    GROUP_BUDGET = 0.0005
    #: Seconds after which the calls of a group not yet started are given to other threads.
    GROUP_DEADLINE = 0.002

    def __init__(self, size: int, on_returned: Callable[[], None] | None = None) -> None:
        self._size = size
        self._on_returned = on_returned
        #: calls given up on (``give_up``) whose thread has not returned: when each was given up,
        #: and whether at its time limit
        self._given_up: dict[Call, tuple[float, bool]] = {}
        self._groups: queue.SimpleQueue[_Group | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[Call, Any, BaseException | None]] = collections.deque()
        self._drained: collections.deque[_Group] = collections.deque()
        self._wake_pending = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: recent run time of each key's calls, in seconds (a moving average, kept by the threads)
        self._cost: dict[object, float] = {}

    async def run(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], ctx: Context, timeout: float | None
    ) -> Any:
        self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = self._loop.create_future()
        call = _FutureCall(ctx, task, lambda: task.fn(ctx, *args, **kwargs), future)
        self.start([call])
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            ctx.request_cancel()  # a cooperative task stops at its next raise_if_cancelled()
            self.give_up(call, timed_out=True)
            raise
        except asyncio.CancelledError:  # cancelled, lease lost, or handed back: the worker settles it
            if not future.done():
                self.give_up(call, timed_out=False)
            raise

    def give_up(self, call: Call, *, timed_out: bool) -> None:
        """The job of ``call`` was settled (its time limit passed, or it was cancelled, lost or
        handed back) before its thread returned (call on the loop). The thread cannot be stopped:
        the call stays ``overrunning``, keeping its worker slot, until it returns (or, if no thread
        took it yet, until one skips it); what it returns is dropped."""
        if call.returned:
            return  # the loop has yet to hear of it (or just did): no slot to keep
        self._given_up[call] = (time.monotonic(), timed_out)
        if timed_out and call.ctx is not None:
            job = call.ctx.job
            log.warning("job %s (%s) attempt %d passed its time limit; its thread runs on (Python cannot stop a "
                        "thread) and keeps its worker slot until it returns", job.id, job.task, job.attempt)

    @property
    def overrunning(self) -> int:
        return len(self._given_up)

    def start(self, calls: Sequence[Call]) -> None:
        """Run ``calls`` in threads (call on the loop); each one's ``finished`` is called on the loop."""
        loop = self._loop = asyncio.get_running_loop()
        group: list[Call] = []
        spent = 0.0
        for call in calls:
            cost = self._cost.get(call.key)
            if cost is None or cost > self.GROUP_BUDGET:
                self._dispatch(loop, [call])
                continue
            if group and spent + cost > self.GROUP_BUDGET:
                self._dispatch(loop, group)
                group, spent = [], 0.0
            group.append(call)
            spent += cost
        if group:
            self._dispatch(loop, group)

    def _dispatch(self, loop: asyncio.AbstractEventLoop, calls: list[Call]) -> None:
        group = _Group(calls)
        if len(calls) > 1:
            group.timer = loop.call_later(self.GROUP_DEADLINE, self._overdue, group)
        self._wake(group)

    def _wake(self, group: _Group) -> None:
        with self._lock:
            # a thread per hand-off in flight, up to size (+ those outliving a time limit)
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            thread = threading.Thread(target=self._serve, name=f"conveyor-job-{len(self._threads)}", daemon=False)
            self._threads.append(thread)
            thread.start()
        self._groups.put(group)

    def _overdue(self, group: _Group) -> None:
        """Calls of ``group`` still wait behind a slow one: more threads take them now."""
        self._settle()  # and report those that finished meanwhile
        for _ in range(len(group.calls)):
            self._wake(group)

    def _serve(self) -> None:
        cost = self._cost
        clock = time.perf_counter
        pid = os.getpid()
        while True:
            group = self._groups.get()
            if group is None:
                return
            calls = group.calls
            while calls:
                try:
                    call = calls.popleft()
                except IndexError:  # another thread took the last one
                    break
                if call.ctx is not None and call.ctx.cancelled:
                    # settled before it started (cancelled, handed back, timed out): never run it
                    call.returned = True
                    self._done.append((call, None, _SKIPPED))  # a slot kept for it is free
                    continue
                t0 = clock()
                try:
                    result, error = call.run(), None
                except BaseException as exc:
                    result, error = None, exc
                if os.getpid() != pid:  # a fork the task made came back here: it is not the worker
                    exit_forked_copy(error)
                spent = clock() - t0
                before = cost.get(call.key)
                cost[call.key] = spent if before is None else before + (spent - before) * 0.25
                call.returned = True
                self._done.append((call, result, error))
                if call.then is not None:
                    self._notify()  # the loop hears of this call before its follow-up runs
                    calls.appendleft(call.then)
            if group.timer is not None:
                self._drained.append(group)
            with self._lock:
                self._idle += 1
            self._notify()

    def _notify(self) -> None:
        """Have the loop settle the calls done so far (one callback however many finish meanwhile)."""
        with self._lock:
            wake = not self._wake_pending
            self._wake_pending = True
        loop = self._loop
        if wake and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self._lock:
            self._wake_pending = False
        while self._drained:
            timer = self._drained.popleft().timer
            if timer is not None:
                timer.cancel()  # every call of that group started
        failure: BaseException | None = None
        while self._done:
            call, result, error = self._done.popleft()
            if self._given_up and call in self._given_up:
                self._returned_late(call, error is _SKIPPED)
                continue  # its job was settled: what it returned is dropped
            if error is _SKIPPED:
                continue
            try:
                call.finished(result, error)
            except BaseException as exc:  # settle the rest first, then let the loop report it
                failure = failure or exc
        if failure is not None:
            raise failure

    def _returned_late(self, call: Call, skipped: bool) -> None:
        given_up, timed_out = self._given_up.pop(call)
        if call.ctx is not None and not skipped:
            job, late = call.ctx.job, time.monotonic() - given_up
            # a thread that ignored its limit or cancel for long is worth a line (a cooperative one is not)
            level = logging.WARNING if late >= 1.0 else logging.DEBUG
            why = "its time limit" if timed_out else "the job was cancelled, lost or handed back"
            log.log(level, "job %s (%s) attempt %d: its thread returned %.1f s after %s; its worker slot is free "
                    "again", job.id, job.task, job.attempt, late, why)
        if self._on_returned is not None:
            self._on_returned()

    def stop(self, job_id: str) -> None:
        return None  # threads cannot be stopped; the worker tells the task through ctx.cancelled

    async def close(self) -> None:
        for _ in self._threads:
            self._groups.put(None)
