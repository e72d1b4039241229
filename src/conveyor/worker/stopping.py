"""Stopping within bounds: no step of a worker's stop waits on an engine, or on a task, for
longer than ``SHUTDOWN_BOUND`` seconds (an engine gone silent must not hold a stop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

log = logging.getLogger(__name__)

#: Seconds each step of a shutdown may wait on the engine (see ``Worker._claim_until_stopped``).
SHUTDOWN_BOUND = 5.0
#: Seconds a cancelled task gets before it is cancelled again (``cancel_within``).
RECANCEL_AFTER = 0.5


async def cancel_within(tasks: Collection[asyncio.Task[Any]], bound: float) -> None:
    """Cancel ``tasks`` and wait ``bound`` seconds at most for them to end, cancelling again every
    ``RECANCEL_AFTER`` seconds; their exceptions are taken (a stop has no use for them).

    Again, because psycopg answers a first cancel by asking the server to cancel the query (5 s)
    and then waiting for it to end (5 s more), and a second cancel by closing the connection at
    once: against a silent engine one cancel would hold a stop 10 s per call."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    pending = {t for t in tasks if not t.done()}
    while pending and (left := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_AFTER, left))
    for task in tasks:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("%s ended with %r as the worker stopped", task.get_name(), exc)


__all__ = ["RECANCEL_AFTER", "SHUTDOWN_BOUND", "cancel_within"]
