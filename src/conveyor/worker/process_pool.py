"""Sync task code in child processes: one job per child, killed on timeout or cancel.

Each child is started with ``spawn``, imports the app from ``module:attribute`` once, tells
the parent it is ready, then runs one job at a time: the parent sends
``{"job", "task", "module", "parents"}`` (the job as its public JSON) over a pipe and the
child answers ``["progress", value]`` any number of times, then ``["ok", result]`` or
``["error", type name, message, traceback]``. Every message is JSON, like everything else
in Conveyor (no pickle anywhere): the child turns the job's JSON arguments into the typed
values the function declares itself (``Task.prepare``).

One reader thread per child waits on the pipe and on the process's sentinel and hands what
arrives to the event loop, so the loop never blocks on a child. A child that is stopped,
times out, or dies by itself is replaced at once.

A child that ran ``max_tasks`` jobs, or whose resident memory grew past ``max_memory`` bytes
after a job (leaks in task code or its libraries), is replaced between jobs: the pool starts
its successor and asks it to exit once it is idle, so no job is interrupted.

Children ignore SIGINT and SIGTERM: a signal sent to the whole process group (Ctrl-C,
systemd's ``KillMode=control-group``) must not kill running jobs while the worker drains
them within its grace period. The parent stops a child with SIGKILL, and on Linux a child is
killed when its parent dies (``PR_SET_PDEATHSIG``), so no job outlives its worker.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_objects
from typing import Any

from conveyor.core.context import Context, JobCancelled
from conveyor.core.job import Job, error_info
from conveyor.core.task import Task
from conveyor.worker.pools import PoolBroken, ProcessDied

log = logging.getLogger(__name__)

_MP = multiprocessing.get_context("spawn")
_PR_SET_PDEATHSIG = 1
_RETIRE_GRACE = 10.0  #: seconds a retired child gets to exit by itself before it is killed
_EXIT = b'"exit"'  #: the parent's message asking an idle child to exit


class RemoteError(Exception):
    """An exception raised by task code in a child process.

    The class of each instance is a subclass named after the original exception's class
    (``ValueError``, ``KeyError``, a user's ``PaymentDeclined``…), so that ``type(exc).__name__``
    is the task's real exception type; ``str(exc)`` is its message and ``remote_traceback`` the
    traceback in the child (also chained as ``__cause__``, so ``traceback.format_exc()`` shows it).
    """

    remote_type: str = "Exception"

    def __init__(self, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class _RemoteTraceback(Exception):
    """Carries the child's traceback text as the ``__cause__`` of a ``RemoteError``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


_remote_classes: dict[str, type[RemoteError]] = {}


def remote_error(type_name: str, message: str, remote_traceback: str | None = None) -> RemoteError:
    """A ``RemoteError`` whose class is named ``type_name``."""
    cls = _remote_classes.get(type_name)
    if cls is None:
        cls = type(type_name, (RemoteError,), {"remote_type": type_name, "__module__": "conveyor.remote"})
        _remote_classes[type_name] = cls
    exc = cls(message, remote_traceback)
    if remote_traceback:
        exc.__cause__ = _RemoteTraceback(remote_traceback)
    return exc


class UnknownTask(Exception):
    """Raised in a child that cannot find the task it was sent."""


class _Call:
    __slots__ = ("ctx", "future", "job_id")

    def __init__(self, job_id: str, ctx: Context, future: asyncio.Future[Any]) -> None:
        self.job_id = job_id
        self.ctx = ctx
        self.future = future


class _Child:
    __slots__ = ("call", "conn", "fatal", "jobs", "killed", "process", "reader", "ready", "rss")

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.ready = False  # imported the app and waits for jobs
        self.killed = False  # killed or retired by the pool: no ProcessDied, already replaced
        self.call: _Call | None = None
        self.reader: threading.Thread | None = None
        self.jobs = 0  # jobs it ran to the end
        self.rss = 0  # its resident memory in bytes after its last job (when the pool watches it)
        self.fatal: str | None = None  # why it could not load the app


_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


@atexit.register
def _kill_children_at_exit() -> None:
    # runs before multiprocessing's own exit handler (registered earlier), which would
    # otherwise wait forever for children that are still alive
    for pool in list(_pools):
        pool.kill_all()


#: Children in a row that fail to load the app, none ready, before the pool counts as broken.
BROKEN_AFTER = 3


class ProcessPool:
    """Runs sync tasks in ``size`` child processes that import the app from ``app_spec``.

    ``max_tasks``: replace a child after that many jobs; ``max_memory``: replace a child whose
    resident memory exceeds that many bytes after a job (None: never). ``on_broken(reason)`` is
    called once ``BROKEN_AFTER`` children in a row failed to load the app with none ready: jobs
    waiting for a child then raise ``PoolBroken`` rather than wait forever.
    """

    def __init__(self, size: int, app_spec: str, *, max_tasks: int | None = None,
                 max_memory: int | None = None, on_broken: Callable[[str], None] | None = None) -> None:
        if size < 1:
            raise ValueError("a process pool needs at least one process")
        if (max_tasks is not None and max_tasks < 1) or (max_memory is not None and max_memory < 1):
            raise ValueError("max_tasks and max_memory must be at least 1")
        self.size = size
        self.app_spec = app_spec
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        self._children: set[_Child] = set()
        self._idle: deque[_Child] = deque()
        self._waiters: deque[asyncio.Future[_Child]] = deque()
        self._by_job: dict[str, _Child] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._failures = 0  # children in a row that died before they were ready
        self.on_broken = on_broken
        self.broken: str | None = None  #: why no child can load the app, once that is clear
        _pools.add(self)
        with contextlib.suppress(RuntimeError):
            self._start(asyncio.get_running_loop())  # else at the first run()

    # -- the Pool protocol ------------------------------------------------------------------
    async def run(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], ctx: Context, timeout: float | None
    ) -> Any:
        """Run ``task`` in an idle child; its value, or its exception as a ``RemoteError``."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("the process pool is closed")
        if self._loop is None:
            self._start(loop)
        message = {
            "job": ctx.job.to_json(),  # its JSON arguments: the child prepares them itself
            "task": task.name,
            "module": getattr(task.fn, "__module__", None),
            "parents": dict(ctx.parent_results),
        }
        data = json.dumps(message).encode()
        for attempt in range(3):
            child = await self._acquire()
            try:
                child.conn.send_bytes(data)
                break
            except (OSError, ValueError):
                # it died just now (its reader thread replaces it): try another
                if attempt == 2:
                    raise ProcessDied("the processes for the job died before the job started") from None
        call = _Call(ctx.job.id, ctx, loop.create_future())
        child.call = call
        self._by_job[call.job_id] = child
        try:
            async with asyncio.timeout(timeout):
                return await call.future
        except BaseException:
            # timed out, or the caller was cancelled (the worker abandons the job): kill the child
            if child.call is call:
                self._detach(child)
                self._kill(child)
            raise

    #: A child past its time limit, or whose job was cancelled, is killed: none runs on.
    overrunning = 0

    def stop(self, job_id: str) -> None:
        """Kill the child running ``job_id`` (and start another); its ``run`` returns at once."""
        child = self._by_job.get(job_id)
        if child is None or child.call is None:
            return
        call = self._detach(child)
        if call is not None and not call.future.done():
            if call.ctx.cancelled:
                call.future.set_exception(JobCancelled(f"job {job_id} was cancelled"))
            else:
                call.future.set_exception(ProcessDied("the process running the job was stopped"))
        self._kill(child)

    async def close(self) -> None:
        """Kill every child (running jobs are not waited for) and wait for them to exit."""
        self._closed = True
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()
        for child in list(self._children):
            call = self._detach(child)
            if call is not None and not call.future.done():
                call.future.set_exception(ProcessDied("the process pool was closed"))
        self.kill_all()
        readers = [c.reader for c in self._children if c.reader is not None]
        await asyncio.to_thread(_join_threads, readers, 2.0)

    # -- lifecycle --------------------------------------------------------------------------
    def kill_all(self) -> None:
        """Kill every child now (no replacements)."""
        self._closed = True
        for child in list(self._children):
            self._kill(child)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        """Start one child (on the loop's thread: the child's death signal is tied to it)."""
        loop = self._loop
        if self._closed or loop is None:
            return
        parent_conn, child_conn = _MP.Pipe(duplex=True)
        process = _MP.Process(
            target=_child_main, args=(child_conn, self.app_spec, os.getpid(), self.max_memory is not None,
                                      _logging_of_this_process()),
            name="conveyor-pool", daemon=False,
        )
        try:
            process.start()
        except OSError as exc:
            parent_conn.close()
            child_conn.close()
            self._retry_spawn(f"cannot start a process: {exc}")
            return
        child_conn.close()
        child = _Child(process, parent_conn)
        self._children.add(child)
        child.reader = threading.Thread(
            target=self._read, args=(child, loop), name=f"conveyor-pool-{process.pid}", daemon=True
        )
        child.reader.start()

    def _retry_spawn(self, reason: str) -> None:
        self._failures += 1
        if self._failures >= BROKEN_AFTER and self.broken is None and not any(c.ready for c in self._children):
            self.broken = reason
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(PoolBroken(reason))
            if self.on_broken is not None:
                self.on_broken(reason)
        delay = min(30.0, 0.25 * 2**self._failures)
        log.error("process pool: %s; starting another process in %.1f s", reason, delay)
        if self._loop is not None and not self._closed:
            self._loop.call_later(delay, self._spawn)

    def _kill(self, child: _Child) -> None:
        """SIGKILL ``child`` and start its replacement (children ignore SIGTERM)."""
        if child.killed:
            return
        child.killed = True
        with contextlib.suppress(ValueError):
            self._idle.remove(child)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            child.process.kill()
        if not self._closed:
            self._spawn()

    def _retire(self, child: _Child, reason: str) -> None:
        """Replace the idle ``child``: start its successor, ask it to exit (kill it if it lingers)."""
        log.info("process pool: process %s %s; replacing it", child.process.pid, reason)
        child.killed = True
        self._spawn()
        try:
            child.conn.send_bytes(_EXIT)
        except (OSError, ValueError):
            return  # already gone
        if self._loop is not None:
            self._loop.call_later(_RETIRE_GRACE, self._kill_lingering, child)

    @staticmethod
    def _kill_lingering(child: _Child) -> None:
        if child.process.exitcode is None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                child.process.kill()

    def _spent(self, child: _Child) -> str | None:
        """Why ``child``, which just finished a job, should be replaced; None to keep it."""
        if self.max_tasks is not None and child.jobs >= self.max_tasks:
            return f"ran {child.jobs} jobs (--max-tasks-per-child {self.max_tasks})"
        if self.max_memory is not None and child.rss > self.max_memory:
            return (f"holds {child.rss / 2**20:.0f} MiB after a job "
                    f"(--max-memory-per-child {self.max_memory / 2**20:.0f})")
        return None

    def _detach(self, child: _Child) -> _Call | None:
        call, child.call = child.call, None
        if call is not None and self._by_job.get(call.job_id) is child:
            del self._by_job[call.job_id]
        return call

    # -- handing out children -----------------------------------------------------------------
    async def _acquire(self) -> _Child:
        if self.broken is not None:
            raise PoolBroken(self.broken)
        while self._idle:
            child = self._idle.popleft()
            if not child.killed:
                return child
        waiter: asyncio.Future[_Child] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())
            raise

    def _release(self, child: _Child) -> None:
        if self._closed or child.killed:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    # -- what children say (reader threads, then the loop) ----------------------------------
    def _read(self, child: _Child, loop: asyncio.AbstractEventLoop) -> None:
        """Reader thread: pass each message to the loop, then the child's exit."""
        conn, sentinel = child.conn, child.process.sentinel
        post: Callable[..., object] = loop.call_soon_threadsafe
        try:
            while True:
                ready = wait_for_objects([conn, sentinel])
                if conn not in ready:  # exited: pass on what it sent before, then stop
                    while conn.poll(0) and self._receive(child, post):
                        pass
                    break
                if not self._receive(child, post):
                    break
            child.process.join(1.0)
            if child.process.exitcode is None:  # closed its end of the pipe but lives on
                child.process.kill()
                child.process.join()
            post(self._on_exit, child, child.process.exitcode)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting for this child any more
        finally:
            conn.close()

    def _receive(self, child: _Child, post: Callable[..., object]) -> bool:
        try:
            message = tuple(json.loads(child.conn.recv_bytes()))
        except (EOFError, OSError):
            return False
        except ValueError as exc:  # not JSON: fail the job, keep the child
            message = ("error", type(exc).__name__, f"the job's result could not be read: {exc}", None)
        post(self._on_message, child, message)
        return True

    def _on_message(self, child: _Child, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            child.ready = True
            self._failures = 0
            self._release(child)
        elif kind == "fatal":
            log.error("process pool: a process could not load the app %r: %s", self.app_spec, message[1])
            child.fatal = message[1]
        elif kind == "progress":
            call = child.call
            if call is not None and not call.future.done():
                value = message[1]
                try:
                    call.ctx.progress(value["fraction"], value.get("message"))
                except Exception:
                    log.exception("job %s: progress could not be reported", call.job_id)
        elif kind == "rss":  # sent just before a job's reply
            child.rss = message[1]
        elif kind in ("ok", "error"):
            call = self._detach(child)
            if call is not None and not call.future.done():
                if kind == "ok":
                    call.future.set_result(message[1])
                else:
                    call.future.set_exception(remote_error(message[1], message[2], message[3]))
            child.jobs += 1
            reason = self._spent(child)
            if reason is not None and not self._closed and not child.killed:
                self._retire(child, reason)
            else:
                self._release(child)

    def _on_exit(self, child: _Child, exitcode: int | None) -> None:
        self._children.discard(child)
        with contextlib.suppress(ValueError):
            self._idle.remove(child)
        call = self._detach(child)
        if child.killed or self._closed:
            return
        child.killed = True
        reason = _describe_exit(exitcode)
        if call is not None:
            log.warning("process pool: the process running job %s died (%s)", call.job_id, reason)
            if not call.future.done():
                call.future.set_exception(ProcessDied(f"the process running the job died ({reason})"))
        if child.ready:
            if call is None:
                log.warning("process pool: an idle process died (%s)", reason)
            self._spawn()
        else:
            self._retry_spawn(f"a process died while loading the app {self.app_spec!r} ({child.fatal or reason})")


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"exit code {exitcode}, killed by {name}"
    return f"exit code {exitcode}"


def _join_threads(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


# -- the child ---------------------------------------------------------------------------------
def _rss() -> int:
    """This process's resident memory in bytes (its peak where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _logging_of_this_process() -> tuple[int, str] | None:
    """The root logger's level and format, for children to log as the worker does."""
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    return (root.level, formatter._fmt or "%(message)s") if formatter is not None else None


def _child_main(conn: Connection, app_spec: str, parent_pid: int, report_rss: bool = False,
                logging_setup: tuple[int, str] | None = None) -> None:
    """A child's whole life: load the app, then run jobs until the pipe closes or the parent
    asks it to exit. With ``report_rss`` it sends its resident memory before each reply;
    ``logging_setup`` (level, format) makes task code log as it would in the worker."""
    if logging_setup is not None:
        logging.basicConfig(level=logging_setup[0], format=logging_setup[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        return  # the parent died before we could ask to die with it
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        data = json.dumps(message).encode()  # raises before anything is written
        with lock:  # the task's own threads may report progress
            conn.send_bytes(data)

    from conveyor.loader import load_app

    try:
        app = load_app(app_spec)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            send(("fatal", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    me = os.getpid()
    send(("ready", me))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if data == _EXIT:
            return
        message = json.loads(data)
        reply = _run_job(app, send, message["task"], message["module"], Job.from_json(message["job"]),
                         message["parents"])
        if os.getpid() != me:  # a fork the task made came back here: only this child may reply
            os._exit(_exit_code(reply))
        try:
            _send_reply(send, reply, report_rss)
        except (OSError, EOFError):
            return  # the parent is gone


def _send_reply(send: Callable[[tuple[Any, ...]], None], reply: tuple[Any, ...], report_rss: bool) -> None:
    if report_rss:
        send(("rss", _rss()))
    try:
        send(reply)  # encodes before it writes: a result that is not JSON writes nothing
    except (OSError, EOFError):
        raise
    except Exception as exc:
        send(("error", "TypeError", f"the task's result cannot be passed back: {exc}", None))


def _exit_code(reply: tuple[Any, ...]) -> int:
    """The exit code of a forked copy of a child, from the reply it would have sent."""
    if reply[0] == "ok":
        return 0
    if reply[1] == "SystemExit":
        message = str(reply[2])
        return int(message) if message.isdigit() else (0 if message in ("", "None") else 1)
    return 1


def _run_job(
    app: Any,
    send: Callable[[tuple[Any, ...]], None],
    task_name: str,
    module: str | None,
    job: Job,
    parent_results: dict[str, Any],
) -> tuple[Any, ...]:
    def report(value: dict[str, Any]) -> None:
        send(("progress", value))

    try:
        task = app.tasks.get(task_name)
        if task is None and module and module not in ("__main__", "__mp_main__"):
            importlib.import_module(module)  # a task registered by a module the app does not import
            task = app.tasks.get(task_name)
        if task is None:
            raise UnknownTask(f"no task {task_name!r} is registered in the app of this worker")
        args, kwargs = task.prepare(job.args, job.kwargs)
        result = task.fn(Context(job, report, parent_results), *args, **kwargs)
        from conveyor.worker.execute import _check_json

        _check_json(result)
    except BaseException as exc:
        info = error_info(exc, traceback.format_exc())
        return ("error", info["type"], info["message"], info["traceback"])
    return ("ok", result)
