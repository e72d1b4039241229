"""Run one leased job and decide its outcome (the rules are in ``core.rules``)."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import Any

from conveyor.backends.base import Lease, Outcome
from conveyor.core import rules
from conveyor.core.context import Context, JobCancelled
from conveyor.core.job import error_info
from conveyor.core.task import Task
from conveyor.serialization import NUL_REFUSED, dumps, holds_nul, keys_are_text
from conveyor.worker.pools import Pool, PoolBroken, ProcessDied, run_async

log = logging.getLogger(__name__)


async def execute(task: Task | None, lease: Lease, ctx: Context, pool: Pool, max_deliveries: int) -> Outcome:
    """Run the job's attempt and turn what happened into an ``Outcome``."""
    if task is None:
        return unknown_task(lease)
    try:
        args, kwargs = task.prepare(lease.job.args, lease.job.kwargs)
        timeout = time_limit(task, lease)
        if task.is_async:
            result: Any = await run_async(task, args, kwargs, ctx, timeout)
        else:
            result = await pool.run(task, args, kwargs, ctx, timeout)
    except BaseException as exc:
        return decide(task, lease, ctx, None, exc, max_deliveries)
    return decide(task, lease, ctx, result, None, max_deliveries)


def unknown_task(lease: Lease) -> Outcome:
    """The outcome of a job whose task this worker does not know."""
    job = lease.job
    error = {"type": "UnknownTask", "message": f"no task {job.task!r} is registered in this worker", "traceback": None}
    return rules.failed_attempt(job, lease.token, error, time.time())


def time_limit(task: Task, lease: Lease) -> float | None:
    """Seconds the attempt may take (the job's own limit, else the task's), or ``None``."""
    timeout = lease.job.timeout
    return timeout if timeout is not None else task.options.timeout


def decide(
    task: Task, lease: Lease, ctx: Context, result: Any, error: BaseException | None, max_deliveries: int
) -> Outcome:
    """The outcome of an attempt that returned ``result`` or raised ``error``.

    Re-raises ``error`` when it is not the attempt's to report: the worker itself cancelling
    the job (abandon, shutdown), or a ``BaseException`` that is not an ``Exception`` (but a
    ``SystemExit`` or ``KeyboardInterrupt`` the task raised is its failure: the worker's own
    signals never reach task code as exceptions).
    """
    job, token = lease.job, lease.token
    if error is None:
        try:
            _check_json(result)
        except TypeError as exc:
            error = exc
        else:
            return rules.succeeded(job, token, result)
    if isinstance(error, JobCancelled | asyncio.CancelledError):
        if not ctx.cancelled:
            raise error  # the worker itself is cancelling this coroutine (abandon or shutdown)
        return rules.cancelled(job, token)
    if isinstance(error, PoolBroken):  # no process here can load the app: not the job's fault
        return rules.handed_back(job, token)
    if isinstance(error, ProcessDied):
        log.warning("job %s (%s): %s", job.id, job.task, error)
        return rules.delivery_lost(job, token, max_deliveries, str(error))
    if isinstance(error, TimeoutError):
        limit = job.timeout or task.options.timeout
        message = str(error) or (
            f"the attempt exceeded its time limit of {limit:g} s" if limit else "the attempt timed out"
        )
        info = {"type": "TimeoutError", "message": message, "traceback": None}
        log.info("job %s (%s) attempt %d timed out", job.id, job.task, job.attempt)
        return rules.failed_attempt(job, token, info, time.time(), task.options)
    if isinstance(error, Exception | SystemExit | KeyboardInterrupt):
        log.info("job %s (%s) attempt %d raised %s", job.id, job.task, job.attempt, type(error).__name__)
        text = "".join(traceback.format_exception(error))
        return rules.failed_attempt(job, token, error_info(error, text), time.time(), task.options)
    raise error


def _check_json(result: Any) -> None:
    """Refuse a result the engines could not store, here, as the attempt's failure: an outcome
    that fails to encode later would stop the worker recording any outcome."""
    kind = type(result)
    if result is None or kind is bool or (kind is int and result.bit_length() < 4096) \
            or (kind is str and result.isascii() and "\x00" not in result):
        return  # the common results, at no cost
    try:
        text = dumps(result)
        text.encode()  # UTF-8: a lone surrogate (os.fsdecode of a non-UTF-8 name) is not
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to encode
        raise TypeError(f"the task returned a value that is not JSON ({_first_line(exc)}); "
                        "Conveyor stores only JSON results") from None
    if "\\u0000" in text and holds_nul(result):
        raise TypeError(f"the task returned a value where {NUL_REFUSED}")
    if not keys_are_text(result):
        raise TypeError("the task returned an object with a key that is not text, which is not JSON "
                        "(json would turn 1 into \"1\"); Conveyor stores only JSON results")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
