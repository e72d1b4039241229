"""Periodic tasks: one job per cron tick, however many schedulers run.

Each tick is enqueued with the idempotency key ``schedule:<task>:<tick>``, so a second
scheduler (another worker, another host) finds the job already there and adds nothing:
no leader election, nothing to fail over. After downtime only the most recent missed tick
is enqueued (within ``CATCH_UP`` seconds); older ones are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from conveyor.core.errors import ConveyorError, RegistrationError

if TYPE_CHECKING:
    from conveyor.core.app import Conveyor, Schedule

log = logging.getLogger(__name__)

#: A tick missed by at most this many seconds (downtime) is still enqueued once.
CATCH_UP = 3600.0


def check_cron(cron: str, tz: str) -> None:
    """Raise ``RegistrationError`` for an invalid cron expression or time zone."""
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise RegistrationError(f"invalid cron expression {cron!r}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise RegistrationError(f"unknown time zone {tz!r}") from None


def previous_tick(schedule: Schedule, now: float) -> float:
    """The latest tick at or before ``now``."""
    base = datetime.fromtimestamp(now, ZoneInfo(schedule.tz))
    return float(croniter(schedule.cron, base).get_prev(float))


def next_tick(schedule: Schedule, now: float) -> float:
    """The first tick after ``now``."""
    base = datetime.fromtimestamp(now, ZoneInfo(schedule.tz))
    return float(croniter(schedule.cron, base).get_next(float))


def tick_key(schedule: Schedule, tick: float) -> str:
    stamp = datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"schedule:{schedule.task}:{stamp}"


async def enqueue_tick(app: Conveyor, schedule: Schedule, tick: float) -> None:
    await app.enqueue_async(
        schedule.task,
        (),
        dict(schedule.kwargs or {}),
        key=tick_key(schedule, tick),
        metadata={"schedule": schedule.cron, "tick": tick},
    )


async def run_scheduler(app: Conveyor, stop: asyncio.Event, schedules: Sequence[Schedule] | None = None) -> None:
    """Enqueue each schedule's ticks until ``stop`` is set."""
    schedules = list(app.schedules if schedules is None else schedules)
    if not schedules:
        return
    now = time.time()
    due = {}
    for s in schedules:
        last = previous_tick(s, now)
        due[s] = last if now - last <= CATCH_UP else next_tick(s, now)
    while not stop.is_set():
        now = time.time()
        for s, tick in due.items():
            if tick <= now:
                try:
                    await enqueue_tick(app, s, tick)
                except ConveyorError as exc:
                    log.warning("schedule %s: could not enqueue tick: %s", s.task, exc)
                    continue
                due[s] = next_tick(s, max(now, tick))
        wait = max(0.01, min(due.values()) - time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(wait, 1.0))
