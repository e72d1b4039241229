"""Periodic tasks: one job per cron tick, however many schedulers run.

Each tick is enqueued with the idempotency key ``schedule:<task>:<tick>``, so a second
scheduler (another worker, another host) finds the job already there and adds nothing:
no leader election, nothing to fail over. After downtime only the most recent missed tick
is enqueued (if at most the schedule's ``catch_up`` seconds old); older ones are skipped.
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

from conveyor.core.errors import BackendUnavailable, ConveyorError, RegistrationError

if TYPE_CHECKING:
    from conveyor.core.app import Conveyor, Schedule

log = logging.getLogger(__name__)
RETRY = 1.0  #: seconds before a tick the backend could not take is tried again


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


def describe(schedule: Schedule, now: float) -> dict[str, object]:
    """A schedule as ``GET /v1/schedules`` and ``conveyor schedules`` show it."""
    from conveyor.serialization import to_rfc3339

    return {
        "task": schedule.task,
        "cron": schedule.cron,
        "tz": schedule.tz,
        "kwargs": dict(schedule.kwargs or {}),
        "catch_up": schedule.catch_up,
        "previous_run_at": to_rfc3339(previous_tick(schedule, now)),
        "next_run_at": to_rfc3339(next_tick(schedule, now)),
    }


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
    due: dict[int, float] = {}
    for s in schedules:
        last = previous_tick(s, now)
        catch_up = s.catch_up if s.catch_up is not None else float("inf")
        due[id(s)] = last if now - last <= catch_up else next_tick(s, now)
    retry_at: dict[int, float] = {}  # a tick the backend could not take: tried again then, not in a hot loop
    while not stop.is_set():
        now = time.time()
        for s in schedules:
            tick = due[id(s)]
            if tick <= now and retry_at.get(id(s), 0.0) <= now:
                try:
                    await enqueue_tick(app, s, tick)
                except BackendUnavailable as exc:
                    log.warning("schedule %s: could not enqueue tick: %s; retrying in %.0f s", s.task, exc, RETRY)
                    retry_at[id(s)] = now + RETRY
                    continue
                except ConveyorError as exc:  # it never will (e.g. the task changed): skip this tick
                    log.warning("schedule %s: could not enqueue tick, skipped: %s", s.task, exc)
                due[id(s)] = next_tick(s, max(now, tick))
        wait = max(0.01, min(max(due[id(s)], retry_at.get(id(s), 0.0)) for s in schedules) - time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(wait, 1.0))
