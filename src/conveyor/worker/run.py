"""Running a worker in this process, on an event loop of its own, whose end waits on nothing for
long: job code that will not stop is left to the process's exit (``left_running``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from conveyor.core.app import Conveyor
from conveyor.worker.pools import LEFT_BEHIND
from conveyor.worker.stopping import SHUTDOWN_BOUND, cancel_within
from conveyor.worker.worker import Worker

log = logging.getLogger(__name__)


def run_worker(app: Conveyor, **options: Any) -> int:
    """Run a worker (``Worker(app, **options)``) in this process until it stops; its exit code."""
    return run_in_process(Worker(app, **options))


def run_in_process(worker: Worker) -> int:
    """Run ``worker`` in this process, on an event loop of its own, until it stops; its exit code.

    Not ``asyncio.run``: at its end it waits for every task it cancels, and a job coroutine that
    swallows its cancel would hold the stop for as long as it likes. Here the leftovers get
    ``SHUTDOWN_BOUND`` seconds; what is still running then is left to the process's exit (see
    ``left_running``), its job settled or handed back already."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(worker.run())
    finally:
        pending = asyncio.all_tasks(loop)
        loop.run_until_complete(cancel_within(pending, SHUTDOWN_BOUND))
        if all(task.done() for task in pending):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        else:
            LEFT_BEHIND.update(task for task in pending if not task.done())
            log.warning("%d job coroutine(s) ignored their cancel; the process exits without them", len(LEFT_BEHIND))


def left_running() -> bool:
    """Whether job code the worker gave up on still runs (a thread past its time limit, a
    coroutine that ignored its cancel): the process must then exit without waiting for it."""
    threads = any(t.name.startswith("conveyor-job") and t.is_alive() for t in threading.enumerate())
    return threads or any(not t.done() for t in LEFT_BEHIND)


__all__ = ["left_running", "run_in_process", "run_worker"]
