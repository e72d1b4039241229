"""Periodic tasks: one job per cron tick, however many schedulers run.

Each tick is enqueued with the idempotency key ``schedule:<task>:<tick>``, so a second
scheduler (another worker, another host) finds the job already there and adds nothing:
no leader election, nothing to fail over. After downtime only the most recent missed tick
is enqueued, if it is at most the schedule's ``catch_up`` seconds old, and no older than its
queue's ``result_ttl``: the key lives in the tick's job record, and a record that may be gone
can no longer stop a second run. Older ticks are skipped.

Cron expressions are croniter's: 5 fields, or 6 with the seconds LAST, or ``@hourly`` and the
like, in the schedule's time zone. When clocks go back, a schedule that names its hours (daily,
weekly, ...) fires once per wall-clock time, as cron does; an hourly-or-finer one fires in both
passes of the repeated hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import reprlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from croniter import croniter

from conveyor.core.errors import BackendUnavailable, ConveyorError, RegistrationError

if TYPE_CHECKING:
    from conveyor.core.app import Conveyor, Schedule

log = logging.getLogger(__name__)
RETRY = 1.0  #: seconds before a tick the backend could not take is tried again
#: A running scheduler enqueues a tick this many seconds late at most before it counts as
#: missed (then ``catch_up`` and ``result_ttl`` decide): a busy loop is not an outage.
ON_TIME = 5.0
#: An expression must fire within this many seconds of its registration (Feb 29 does).
HORIZON = 5 * 366 * 86400.0
#: croniter's random ("R") and hashed ("H") fields: each scheduler would draw its own time.
_NOT_DETERMINISTIC = re.compile(r"(?<![a-z])[rh](?![a-z])", re.IGNORECASE)


# -- registration ---------------------------------------------------------------------------
def check_schedule(cron: object, tz: object, catch_up: object, kwargs: object = None) -> None:
    """Raise ``RegistrationError`` unless the schedule can fire, the same on every scheduler, with
    ``kwargs`` (None or a dict keyed by argument names) for each tick; the task checks their values."""
    _check_fires(_checked_cron(cron), _checked_zone(tz))
    if catch_up is not None and (isinstance(catch_up, bool) or not isinstance(catch_up, int | float)
                                 or not catch_up >= 0):
        raise RegistrationError(f"catch_up must be None or a number of seconds ≥ 0, not {catch_up!r}")
    if kwargs is not None and (not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs)):
        raise RegistrationError(f"kwargs must be None or a dict of the task's arguments by name (str keys), "
                                f"not {reprlib.repr(kwargs)}")


def _checked_cron(cron: object) -> str:
    if not isinstance(cron, str):
        raise RegistrationError(f"invalid cron expression {cron!r}")
    fields = cron.split()
    if not cron.startswith("@") and len(fields) not in (5, 6):
        raise RegistrationError(
            f"cron expression {cron!r} has {len(fields)} fields: use 5 (minute hour day month weekday), "
            "or 6 with the seconds last"
        )
    if _NOT_DETERMINISTIC.search(cron):
        raise RegistrationError(
            f"cron expression {cron!r}: random (R) and hashed (H) fields are refused: every scheduler "
            "would pick its own time and enqueue a job of its own"
        )
    if not croniter.is_valid(cron):
        raise RegistrationError(f"invalid cron expression {cron!r}")
    if len(fields) == 6 and fields[5] == "*":  # the Quartz reading (seconds first) lands here
        raise RegistrationError(
            f"cron expression {cron!r}: the 6th field is the seconds (last, not first as in Quartz); "
            "'*' there would enqueue a job every second of each matching minute (write '*/1' if meant)"
        )
    return cron


def _checked_zone(tz: object) -> str:
    if not isinstance(tz, str):
        raise RegistrationError(f"a time zone is a name such as 'Europe/Berlin', not {tz!r}")
    try:
        ZoneInfo(tz)
    except (LookupError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; a directory an OSError
        raise RegistrationError(f"unknown time zone {tz!r}") from None
    return tz


def _check_fires(cron: str, tz: str) -> None:
    now = time.time()
    try:
        first = float(croniter(cron, datetime.fromtimestamp(now, ZoneInfo(tz))).get_next(float))
    except (ValueError, KeyError, OverflowError):  # croniter's "failed to find next date" is a ValueError
        first = float("inf")
    if first - now > HORIZON:
        raise RegistrationError(f"cron expression {cron!r} never fires (no tick within the next 5 years)")


# -- ticks ----------------------------------------------------------------------------------
@functools.cache
def _names_hours(cron: str) -> bool:
    """Whether ``cron`` fires at given hours (not every hour): such a schedule runs once per
    wall-clock time when clocks go back, like cron's fixed-time jobs."""
    return bool(croniter(cron).expanded[1] != ["*"])


def _second_pass(schedule: Schedule, tick: float) -> bool:
    """Whether ``tick`` repeats a wall-clock time the clocks were set back over (fold 1) and
    the schedule fires once per wall-clock time: the first pass already was its tick."""
    return _names_hours(schedule.cron) and datetime.fromtimestamp(tick, ZoneInfo(schedule.tz)).fold == 1


def previous_tick(schedule: Schedule, now: float) -> float:
    """The latest tick at or before ``now``."""
    it = croniter(schedule.cron, datetime.fromtimestamp(now, ZoneInfo(schedule.tz)))
    tick = float(it.get_prev(float))
    while _second_pass(schedule, tick):
        tick = float(it.get_prev(float))
    return tick


def next_tick(schedule: Schedule, now: float) -> float:
    """The first tick after ``now``."""
    it = croniter(schedule.cron, datetime.fromtimestamp(now, ZoneInfo(schedule.tz)))
    tick = float(it.get_next(float))
    while _second_pass(schedule, tick):
        tick = float(it.get_next(float))
    return tick


def describe(schedule: Schedule, now: float) -> dict[str, object]:
    """A schedule as ``GET /v1/schedules`` and ``conveyor schedules`` show it.

    A schedule whose ticks cannot be computed (one built by hand, past ``periodic``'s checks)
    shows null times and an ``error``, rather than failing the whole list.
    """
    from conveyor.serialization import to_rfc3339

    item: dict[str, object] = {
        "task": schedule.task,
        "cron": schedule.cron,
        "tz": schedule.tz,
        "kwargs": dict(schedule.kwargs or {}),
        "catch_up": schedule.catch_up,
    }
    try:
        item["previous_run_at"] = to_rfc3339(previous_tick(schedule, now))
        item["next_run_at"] = to_rfc3339(next_tick(schedule, now))
    except Exception as exc:  # any croniter / zoneinfo failure: this item says so, the list stands
        item.update(previous_run_at=None, next_run_at=None, error=f"{type(exc).__name__}: {exc}")
    return item


def _stamp(t: float) -> str:
    """A tick in UTC to the second, as keys and the log show it."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_key(schedule: Schedule, tick: float) -> str:
    """The tick's idempotency key: printable ASCII of at most 255 characters, as every key is
    (a task named in other letters is written with escapes; a very long name by its hash)."""
    stamp = _stamp(tick)
    task = schedule.task
    if not (task.isascii() and task.isprintable()):
        task = task.encode("unicode_escape").decode("ascii")
    if len(task) > 200:
        task = hashlib.sha256(task.encode()).hexdigest()
    return f"schedule:{task}:{stamp}"


async def enqueue_tick(app: Conveyor, schedule: Schedule, tick: float) -> None:
    await app.enqueue_async(
        schedule.task,
        (),
        dict(schedule.kwargs or {}),
        key=tick_key(schedule, tick),
        metadata={"schedule": schedule.cron, "tick": tick},
    )


async def result_ttl(app: Conveyor, schedule: Schedule) -> float:
    """How long the records of the schedule's queue outlive their run: the time a tick's
    idempotency key is sure to be there (the lower of the stored and the declared value)."""
    queue = app.get_task(schedule.task).options.queue
    stored = (await (await app.backend()).queue_settings(queue)).result_ttl
    declared = app.queue_declarations.get(queue, {}).get("result_ttl")
    return min(stored, declared) if declared is not None else stored


# -- the loop -------------------------------------------------------------------------------
@dataclass
class _Entry:
    """One schedule's state in a running scheduler."""

    schedule: Schedule
    due: float  #: the tick to enqueue next
    #: ``due`` passed while this scheduler was not running, or the engine was down: only the
    #: latest tick is enqueued then, and only within the catch-up window
    missed: bool
    retry_at: float = 0.0  #: the backend could not take ``due``: not tried again before then
    failed: bool = False  #: an unexpected error was logged (with its traceback) once already
    dropped: bool = False  #: its ticks cannot be computed: left out from then on


async def run_scheduler(app: Conveyor, stop: asyncio.Event, schedules: Sequence[Schedule] | None = None) -> None:
    """Enqueue each schedule's ticks until ``stop`` is set.

    A schedule that fails is logged with its name and left out or skipped to its next tick;
    the others keep firing. Nothing here raises (the worker runs this as a bare task whose
    exception nobody would see until shutdown).
    """
    try:
        entries = [e for s in (app.schedules if schedules is None else schedules) if (e := _start(s))]
        while not stop.is_set() and entries:
            now = time.time()
            for e in entries:
                if e.due <= now and e.retry_at <= now:
                    await _step(app, e, now)
            entries = [e for e in entries if not e.dropped]
            wait = min((max(e.due, e.retry_at) for e in entries), default=0.0) - time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(max(0.01, wait), 1.0))
    except Exception:  # a bug of ours: say so loudly rather than stop firing unseen
        log.exception("scheduler stopped: no periodic task is enqueued by this worker any more")


def _start(schedule: Schedule) -> _Entry | None:
    """The schedule's entry, due at its latest tick (enqueued only if not missed for too long)."""
    try:
        return _Entry(schedule, previous_tick(schedule, time.time()), missed=True)
    except Exception:
        log.exception("schedule %s (%r, %s): its ticks cannot be computed; it never fires",
                      schedule.task, schedule.cron, schedule.tz)
        return None


async def _step(app: Conveyor, e: _Entry, now: float) -> None:
    """Enqueue ``e``'s due tick, or skip it; then make the next tick due. Never raises."""
    s = e.schedule
    try:
        if e.missed or now - e.due > ON_TIME:
            e.due = previous_tick(s, now)  # after downtime or an outage: only the most recent tick
            if await _too_late(app, e, now):
                e.due, e.missed = next_tick(s, now), False
                return
        await enqueue_tick(app, s, e.due)
    except BackendUnavailable as exc:
        log.warning("schedule %s: could not enqueue tick: %s; retrying in %.0f s", s.task, exc, RETRY)
        e.retry_at, e.missed = now + RETRY, True  # the retry takes the latest tick, if not too old
        return
    except ConveyorError as exc:  # it never will (e.g. the task changed): skip this tick
        log.warning("schedule %s: could not enqueue tick, skipped: %s", s.task, exc)
    except Exception:
        _unexpected(e, "tick skipped")
    try:
        e.due, e.missed = next_tick(s, max(now, e.due)), False
    except Exception:
        _unexpected(e, "its ticks cannot be computed any more; it never fires", always=True)
        e.dropped = True


async def _too_late(app: Conveyor, e: _Entry, now: float) -> bool:
    """Whether ``e``'s missed tick is past catching up: older than ``catch_up``, or than the
    queue's ``result_ttl`` (its job's record, and with it the key that keeps the tick to one
    run, may be gone: a restart would run it again)."""
    s, tick = e.schedule, e.due
    late = now - tick
    why = None
    if s.catch_up is not None and late > s.catch_up:
        why = f"catch_up is {s.catch_up:g} s"
    elif late > (ttl := await result_ttl(app, s)):
        why = f"its queue's result_ttl is {ttl:g} s"
    if why:
        # at start-up a stale tick is routine; one the engine's outage cost is news
        log.log(logging.WARNING if e.retry_at else logging.INFO,
                "schedule %s: tick %s not run: %.0f s late and %s; next tick %s",
                s.task, _stamp(tick), late, why, _stamp(next_tick(s, now)))
    return why is not None



def _unexpected(e: _Entry, what: str, always: bool = False) -> None:
    """Log an unexpected error of one schedule: with its traceback the first time, then quietly
    (a schedule failing at every tick must not flood the log)."""
    level = logging.DEBUG if e.failed and not always else logging.ERROR
    log.log(level, "schedule %s (%r): %s", e.schedule.task, e.schedule.cron, what, exc_info=True)
    e.failed = True
