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
from conveyor.serialization import dumps
from conveyor.worker.pools import Pool, ProcessDied, run_async

log = logging.getLogger(__name__)


async def execute(task: Task | None, lease: Lease, ctx: Context, pool: Pool, max_deliveries: int) -> Outcome:
    """Run the job's attempt and turn what happened into an ``Outcome``."""
    job, token = lease.job, lease.token
    if task is None:
        error = {
            "type": "UnknownTask",
            "message": f"no task {job.task!r} is registered in this worker",
            "traceback": None,
        }
        return rules.failed_attempt(job, token, error, time.time())
    try:
        args, kwargs = task.prepare(job.args, job.kwargs)
        timeout = job.timeout if job.timeout is not None else task.options.timeout
        if task.is_async:
            result: Any = await run_async(task, args, kwargs, ctx, timeout)
        else:
            result = await pool.run(task, args, kwargs, ctx, timeout)
        _check_json(result)
    except (JobCancelled, asyncio.CancelledError):
        if not ctx.cancelled:
            raise  # the worker itself is cancelling this coroutine (abandon or shutdown)
        return rules.cancelled(job, token)
    except ProcessDied as exc:
        log.warning("job %s (%s): %s", job.id, job.task, exc)
        return rules.delivery_lost(job, token, max_deliveries, str(exc))
    except TimeoutError as exc:
        limit = job.timeout or task.options.timeout
        message = str(exc) or f"the attempt exceeded its time limit of {limit:g} s"
        error = {"type": "TimeoutError", "message": message, "traceback": None}
        log.info("job %s (%s) attempt %d timed out", job.id, job.task, job.attempt)
        return rules.failed_attempt(job, token, error, time.time(), task.options)
    except Exception as exc:
        log.info("job %s (%s) attempt %d raised %s", job.id, job.task, job.attempt, type(exc).__name__)
        return rules.failed_attempt(job, token, error_info(exc, traceback.format_exc()), time.time(), task.options)
    return rules.succeeded(job, token, result)


def _check_json(result: Any) -> None:
    try:
        dumps(result)
    except (TypeError, ValueError):
        raise TypeError(
            f"the task returned a {type(result).__name__}, which is not JSON; Conveyor stores only JSON results"
        ) from None
