"""The application: a registry of tasks, queues and schedules, and the way in to enqueue."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import os
import reprlib
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from conveyor.backends import create_backend, resolve_url
from conveyor.backends.base import Enqueued
from conveyor.backends.group_commit import GroupCommit
from conveyor.core import checks
from conveyor.core.errors import (
    ConfigurationError,
    InvalidArguments,
    RegistrationError,
    UnknownTask,
    ValidationError,
)
from conveyor.core.handle import JobHandle
from conveyor.core.ids import job_id_of, uuid7
from conveyor.core.job import Job, Status
from conveyor.core.portal import Portal
from conveyor.core.queues import QueueSettings
from conveyor.core.task import RESERVED, Task, TaskOptions, check_task_name

if TYPE_CHECKING:
    from conveyor.backends.base import Backend

F = TypeVar("F", bound=Callable[..., Any])
#: One job to enqueue: task, args, kwargs, options.
Submission = tuple["Task | str", Sequence[Any], Mapping[str, Any], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic task: enqueued once per cron tick, however many schedulers run."""

    task: str
    cron: str
    tz: str = "UTC"
    kwargs: Mapping[str, Any] | None = None
    #: After downtime, the last missed tick is still enqueued if it is at most this many
    #: seconds old (None: however old; 0: never catch up). Older missed ticks are skipped.
    catch_up: float | None = 3600.0


class Conveyor:
    """Registry of tasks, queues and schedules; enqueues through the backend of ``url``.

    ``url`` None (the default) means ``CONVEYOR_URL``, else ``sqlite:///conveyor.db``; an empty
    ``CONVEYOR_URL`` counts as unset (deployment tools set a variable given no value to "").
    A ``url`` given here must be a non-empty str: ``Conveyor("")`` is refused, not the default.
    """

    def __init__(self, url: str | None = None) -> None:
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ConfigurationError(
                f"the backend URL must be a non-empty str such as 'sqlite:///conveyor.db', not {reprlib.repr(url)} "
                "(None: CONVEYOR_URL, else sqlite:///conveyor.db)"
            )
        #: The backend URL (``CONVEYOR_URL``, else ``sqlite:///conveyor.db``).
        self.url = resolve_url(url)
        self.tasks: dict[str, Task] = {}
        #: Declared queue settings (only the ones given), applied when a worker or server starts.
        self.queue_declarations: dict[str, dict[str, Any]] = {}
        self.schedules: list[Schedule] = []
        self.portal = self._portal()
        self._backends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[Backend]] = (
            weakref.WeakKeyDictionary()
        )
        #: per loop not the portal's, what closes its backend as the loop ends (``_close_with_loop``)
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = (
            weakref.WeakKeyDictionary()
        )
        #: the backend of sync enqueues (``enqueue_blocking``); False once known to have none
        self._blocking: Backend | Literal[False] | None = None
        self._blocking_lock = threading.Lock()
        #: sync enqueues of concurrent threads on an engine with no blocking client, run together
        self._thread_enqueues: GroupCommit[Sequence[Job], Enqueued] = GroupCommit(self._enqueue_together, size=len)
        _APPS.add(self)

    def _forked(self) -> None:
        """In a forked child: the parent's event loops and async connections are not ours (their
        sockets and epoll sets are shared with the parent); start afresh, leaving them unused.
        The sync enqueue backend takes care of itself (it checks the process id)."""
        _INHERITED.append((self.portal, self._backends))
        self.portal = self._portal()
        self._backends = weakref.WeakKeyDictionary()
        self._closers = weakref.WeakKeyDictionary()

    def _portal(self) -> Portal:
        # RabbitMQ's robust connection reads and reconnects in tasks of its own: its loop must run
        # between calls too (a thread's own loop runs only during one: a cut logged errors)
        return Portal(always_in_background=urlsplit(self.url).scheme.lower() in ("amqp", "amqps"))

    # -- registration ---------------------------------------------------------------------
    def task(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_retries: int = 3,
        timeout: float | None = None,
        backoff: float = 1.0,
        backoff_cap: float = 3600.0,
        concurrency_limit: int | None = None,
        rate_limit: str | None = None,
        limit_key: str | Callable[..., str] | None = None,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue="media", ...)``.

        ``concurrency_limit`` (at most N of its jobs running at once across all workers) and
        ``rate_limit`` (``"10/s"``, ``"100/m"``, ``"1000/h"`` starts) are global and apply per
        ``limit_key``: a format string over the task's parameters (``"{customer_id}"``) or a
        callable taking its arguments and returning a str; by default the task name. Jobs with
        the same key share the limits, whichever task they belong to. Each limit is at most
        1,000,000 (running jobs; starts per second, minute or hour).

        ``name`` (by default the function's ``__name__``) is a str of 1–200 characters, as
        ``POST /v1/jobs`` takes it.
        """

        def register(func: F) -> Task:
            if not callable(func):
                raise RegistrationError(f"a task is a function, not {func!r}")
            if name is None and not hasattr(func, "__name__"):
                raise RegistrationError(f"{func!r} has no __name__: give the task a name=")
            task_name = check_task_name(func.__name__ if name is None else name)
            options = TaskOptions(
                queue=queue,
                priority=priority,
                max_retries=max_retries,
                timeout=timeout,
                backoff_base=backoff,
                backoff_cap=backoff_cap,
            )
            options.check(f"task {task_name!r}")
            checks.check_queue_name(queue)
            if task_name in self.tasks:
                raise RegistrationError(f"a task named {task_name!r} is already registered")
            limits = {"concurrency_limit": concurrency_limit, "rate_limit": rate_limit, "limit_key": limit_key}
            task = Task(self, func, task_name, options, limits)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def queue(
        self,
        name: str,
        *,
        retention: float | None = None,
        visibility_timeout: float | None = None,
        max_deliveries: int | None = None,
        result_ttl: float | None = None,
    ) -> None:
        """Declare a queue's settings (seconds); applied whenever a worker or server starts."""
        checks.check_queue_name(name)
        given = {
            "retention": retention,
            "visibility_timeout": visibility_timeout,
            "max_deliveries": max_deliveries,
            "result_ttl": result_ttl,
        }
        given = {k: v for k, v in given.items() if v is not None}
        QueueSettings().replace(**given)  # validate now, at import time
        self.queue_declarations[name] = given

    def periodic(
        self,
        cron: str,
        *,
        tz: str = "UTC",
        name: str | None = None,
        queue: str = "default",
        kwargs: Mapping[str, Any] | None = None,
        catch_up: float | None = 3600.0,
        **options: Any,
    ) -> Callable[[F], Task]:
        """Register a function as a task enqueued once per tick of ``cron``.

        ``cron`` has 5 fields (minute hour day month weekday), or 6 with the seconds last, or is
        ``@hourly``, ``@daily``...; it is read in ``tz``. ``catch_up``: after downtime, the last
        missed tick is still enqueued if at most this many seconds old (None: however old).
        """
        from conveyor.scheduler import check_schedule

        # refused here, at import time: a schedule that cannot fire must not reach the scheduler
        check_schedule(cron, tz, catch_up, kwargs)
        unknown = sorted(set(options) - _TASK_OPTIONS)
        if unknown:
            raise RegistrationError(f"periodic: unknown option {unknown[0]!r}; a periodic task's arguments are "
                                    f"kwargs= (a dict), its options {', '.join(sorted(_TASK_OPTIONS))}")
        fixed = dict(kwargs or {})

        def register(func: F) -> Task:
            task: Task = self.task(name=name, queue=queue, **options)(func)
            try:  # every tick enqueues these arguments: they must do, now rather than at each tick
                task.validate((), fixed)
            except BaseException as exc:
                del self.tasks[task.name]  # a refused decorator registers nothing
                if not isinstance(exc, ValidationError):
                    raise
                raise RegistrationError(
                    f"periodic task {task.name!r}: {exc} (a periodic task takes only ctx and the fixed kwargs=)"
                ) from None
            self.schedules.append(Schedule(task.name, cron, tz, fixed, catch_up))
            return task

        return register

    def queue_names(self) -> list[str]:
        """Every queue the app names: its tasks' and its declarations'."""
        names = {t.options.queue for t in self.tasks.values()} | set(self.queue_declarations)
        return sorted(names or {"default"})

    def get_task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(
                f"unknown task {name!r}", [{"pointer": "#/task", "detail": f"no task named {name!r}"}]
            ) from None

    # -- backends -------------------------------------------------------------------------
    async def backend(self) -> Backend:
        """The opened backend of the running event loop (one per loop, opened on first use)."""
        loop = asyncio.get_running_loop()
        future = self._backends.get(loop)
        if future is None:
            self._forget_closed_loops()
            future = loop.create_future()
            self._backends[loop] = future
            try:
                backend = create_backend(self.url)
                await backend.open()
            except BaseException as exc:
                del self._backends[loop]
                future.set_exception(exc)
                future.exception()  # mark retrieved
                raise
            future.set_result(backend)
            if not self.portal.owns(loop):
                await self._close_with_loop(loop, future)
        return await asyncio.shield(future)

    async def _close_with_loop(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Backend]) -> None:
        """Have ``future``'s backend closed as ``loop`` ends: ``asyncio.run`` closes its loop's async
        generators (``shutdown_asyncgens``) before it closes the loop, and this is one of them.
        A script that never calls ``aclose`` leaves no connection behind, one per ``asyncio.run``."""

        async def closing() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                self._closers.pop(loop, None)
                if self._backends.get(loop) is future:
                    del self._backends[loop]
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(future.result().close(), _CLOSE_BOUND)

        closer = self._closers[loop] = closing()
        await closer.__anext__()  # now the loop knows it (and holds it weakly: kept in _closers)

    def _forget_closed_loops(self) -> None:
        """Drop the backends of loops closed without closing them (a loop closed by hand, not
        by ``asyncio.run``): nothing can use them again, and a backend refers to its loop, so
        the weak keys never let go of them by themselves."""
        for loop in [loop for loop in self._backends if loop.is_closed()]:
            del self._backends[loop]
            self._closers.pop(loop, None)

    async def aclose(self) -> None:
        """Close the backend this app opened on the running loop now (``asyncio.run`` closes it
        as its loop ends anyway; a loop run by other means may not)."""
        loop = asyncio.get_running_loop()
        future = self._backends.pop(loop, None)
        closer = self._closers.pop(loop, None)
        if future is not None and future.done() and not future.cancelled() and not future.exception():
            await asyncio.wait_for(future.result().close(), _CLOSE_BOUND)
        if closer is not None:
            await closer.aclose()  # nothing left for it to close

    def close(self) -> None:
        """Close the backends this app opened for synchronous callers (tests, scripts)."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, future in list(self._backends.items()):
            if loop.is_closed() or loop is here or not future.done() or future.exception():
                continue
            close = asyncio.wait_for(future.result().close(), _CLOSE_BOUND)
            with contextlib.suppress(Exception):  # unreachable: nothing left to close cleanly
                if loop.is_running():  # the portal's background loop, in its thread
                    asyncio.run_coroutine_threadsafe(close, loop).result(_CLOSE_BOUND + 1)
                else:
                    loop.run_until_complete(close)
            del self._backends[loop]
        if self._blocking:
            self._blocking.close_blocking()
        self.portal.stop()

    def bind(self, backend: Backend) -> None:
        """Use an already opened ``backend`` for the running loop (workers and servers own theirs)."""
        future = asyncio.get_running_loop().create_future()
        future.set_result(backend)
        self._backends[asyncio.get_running_loop()] = future

    async def apply_queue_settings(self, backend: Backend) -> None:
        """Store the declared settings over what the backend holds (``paused`` is left alone)."""
        for name, given in self.queue_declarations.items():
            current = await backend.queue_settings(name)
            await backend.save_queue_settings(name, current.replace(**given), fields=given)

    # -- enqueue --------------------------------------------------------------------------
    def enqueue(
        self, task: Task | str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> JobHandle:
        """Submit one job (sync)."""
        return self.enqueue_many([(task, args, kwargs or {}, options)])[0]

    async def enqueue_async(
        self, task: Task | str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> JobHandle:
        """Submit one job."""
        return (await self.enqueue_many_async([(task, args, kwargs or {}, options)]))[0]

    def enqueue_many(self, submissions: Sequence[Submission]) -> list[JobHandle]:
        """Submit many jobs in one round trip (sync)."""
        jobs = self._build_jobs(submissions)
        ordered = checks.order_by_dependencies(jobs)
        blocking = self._blocking_backend()
        if blocking is None or blocking.enqueue_blocking is None:
            return self._handles(jobs, ordered, self._thread_enqueues.submit(ordered))
        return self._handles(jobs, ordered, blocking.enqueue_blocking(ordered))

    def _enqueue_together(self, batches: Sequence[Sequence[Job]]) -> list[Enqueued | BaseException]:
        """The sync enqueues of concurrent threads, run by one of them on its loop at once (so the
        engine's own coalescing sends them together): each thread's outcome."""
        return self.portal.call(self._enqueue_each(batches))

    async def _enqueue_each(self, batches: Sequence[Sequence[Job]]) -> list[Enqueued | BaseException]:
        backend = await self.backend()
        if len(batches) == 1:  # a lone caller: no task for it
            return [await backend.enqueue(batches[0])]
        return list(await asyncio.gather(*(backend.enqueue(jobs) for jobs in batches), return_exceptions=True))

    async def enqueue_many_async(self, submissions: Sequence[Submission]) -> list[JobHandle]:
        """Submit many jobs atomically in one round trip."""
        jobs = self._build_jobs(submissions)
        ordered = checks.order_by_dependencies(jobs)
        return self._handles(jobs, ordered, await (await self.backend()).enqueue(ordered))

    def _build_jobs(self, submissions: Sequence[Submission]) -> list[Job]:
        now = time.time()
        if not isinstance(submissions, list | tuple) or not all(
            isinstance(s, tuple | list) and len(s) == 4 and isinstance(s[3], Mapping) for s in submissions
        ):
            raise ValidationError("enqueue_many takes a list of (task, args, kwargs, options) tuples, options a dict")
        if len(submissions) == 1:
            [(task, args, kwargs, options)] = submissions
            return [self.build_job(task, args, kwargs, now=now, **options)]
        jobs = []
        for i, (task, args, kwargs, options) in enumerate(submissions):
            try:
                jobs.append(self.build_job(task, args, kwargs, now=now, **options))
            except ValidationError as exc:  # say which one: pointers into the list of submissions
                errors = [{**e, "pointer": f"#/{i}{e['pointer'].removeprefix('#')}"} for e in exc.errors]
                raise type(exc)(f"item {i}: {exc}", errors) from None
        return jobs

    def _handles(self, jobs: Sequence[Job], ordered: Sequence[Job], stored: Sequence[tuple[Job, bool]]
                 ) -> list[JobHandle]:
        # keyed by the id built here: an idempotent replay returns the stored job, with its own id
        results = dict(zip([j.id for j in ordered], stored, strict=True))
        return [JobHandle(self, *results[j.id]) for j in jobs]

    def _blocking_backend(self) -> Backend | None:
        """The backend that serves sync enqueues without an event loop, if the engine has one."""
        if self._blocking is None:
            with self._blocking_lock:
                if self._blocking is None:
                    backend = create_backend(self.url)
                    self._blocking = backend if backend.enqueue_blocking is not None else False
        return self._blocking if self._blocking is not False else None

    async def enqueue_in_transaction(
        self, connection: Any, task: Task | str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> JobHandle:
        """Enqueue on the caller's own database connection, inside the caller's open transaction.

        The job exists if and only if the caller's transaction commits (PostgreSQL: pass the
        ``psycopg.AsyncConnection`` your own writes use).
        """
        backend = await self.backend()
        enqueue_in = getattr(backend, "enqueue_in", None)
        if enqueue_in is None:
            raise ConfigurationError(f"transactional enqueue needs a PostgreSQL backend, not {self.url.split(':')[0]}")
        job = self.build_job(task, args, kwargs or {}, now=time.time(), **options)
        stored, created = (await enqueue_in(connection, [job]))[0]
        return JobHandle(self, stored, created)

    def build_job(
        self,
        task: Task | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        now: float,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        eta: datetime | float | str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        depends_on: Sequence[Any] | Mapping[str, Any] | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        webhook: str | None = None,
        _id: str | None = None,
        **unknown: Any,
    ) -> Job:
        """Validate a submission into a new ``Job``; ``ValidationError`` names what is wrong."""
        if unknown:  # app.enqueue(task, bogus=1): the options are keywords of its own, not the task's
            bad = sorted(unknown)[0]
            raise ValidationError(f"unknown option {bad!r}; the options are {', '.join(sorted(RESERVED))}",
                                  [{"pointer": f"#/{bad}", "detail": "not an option"}])
        if isinstance(task, str):
            task = self.get_task(task)
        elif not isinstance(task, Task):
            raise ValidationError(
                "task must be a registered task (what @app.task returned) or a task name (str), "
                f"not {reprlib.repr(task)}", [{"pointer": "#/task", "detail": "not a task nor a task name"}],
            )
        if not isinstance(args, list | tuple):
            raise InvalidArguments("args must be a list", [{"pointer": "#/args", "detail": "must be a list"}])
        if not isinstance(kwargs, Mapping):
            raise InvalidArguments("kwargs must be an object", [{"pointer": "#/kwargs", "detail": "must be an object"}])
        task.validate(args, kwargs)
        o = task.options
        scheduled_at = checks.when(delay, eta, now)
        job = Job(
            id=_id or uuid7(),
            task=task.name,
            queue=checks.check_queue_name(queue if queue is not None else o.queue),
            status=Status.SCHEDULED if scheduled_at is not None and scheduled_at > now else Status.QUEUED,
            args=list(args),
            kwargs=dict(kwargs),
            priority=checks.check_int("priority", o.priority if priority is None else priority, 0, 9),
            max_retries=checks.check_int("max_retries", o.max_retries if max_retries is None else max_retries, 0, 1000),
            timeout=checks.check_timeout(o.timeout if timeout is None else timeout),
            depends_on=checks.dependency_ids(depends_on.values() if isinstance(depends_on, Mapping) else depends_on),
            idempotency_key=checks.check_key(key),
            metadata=checks.with_parent_names(checks.check_metadata(metadata), depends_on),
            webhook=checks.check_webhook(webhook),
            created_at=now,
            scheduled_at=scheduled_at,
            updated_at=now,
            **task.limit_fields(args, kwargs),
        )
        return job

    # -- reads and admin ------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobHandle | None:
        """A handle on the job, or None when no job has this id."""
        return self.portal.call(self.get_job_async(job_id))

    async def get_job_async(self, job_id: str) -> JobHandle | None:
        stored_id = job_id_of(job_id)
        if stored_id is None:
            return None
        jobs = await (await self.backend()).get_jobs([stored_id])
        return JobHandle(self, jobs[0], created=False) if jobs else None

    async def cancel_async(self, job_id: str) -> Job | None:
        return await (await self.backend()).cancel(job_id, time.time())


#: The options ``periodic`` passes on to ``task`` (name and queue are its own).
_TASK_OPTIONS = frozenset(inspect.signature(Conveyor.task).parameters) - {"self", "fn", "name", "queue"}

#: every app of this process, and what a forked child inherited from its parent: kept
#: referenced, never used nor closed (closing would act on the parent's connections)
_APPS: weakref.WeakSet[Conveyor] = weakref.WeakSet()
_INHERITED: list[object] = []


def _after_fork_in_child() -> None:
    for app in list(_APPS):
        app._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)

_CLOSE_BOUND = 5.0  #: seconds closing one backend may take


@atexit.register
def _close_apps_at_exit() -> None:
    """Close what scripts left open: a connection pool's or listener's tasks on an idle loop
    would otherwise be destroyed pending at exit, printing warnings and tracebacks."""
    for app in list(_APPS):
        with contextlib.suppress(Exception):
            app.close()
