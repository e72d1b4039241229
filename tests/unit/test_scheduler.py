"""Periodic tasks: ticks, keys, catch-up after downtime, and exactly one job per tick."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conveyor import Context, Conveyor, Schedule
from conveyor.backends.base import JobQuery
from conveyor.core.errors import RegistrationError
from conveyor.scheduler import next_tick, previous_tick, run_scheduler, tick_key
from conveyor.worker.worker import Worker


@pytest.fixture
def app(tmp_path):
    app = Conveyor(f"sqlite:///{tmp_path}/s.db")
    yield app
    app.close()


def test_periodic__invalid_cron_or_zone_is_refused(app):
    with pytest.raises(RegistrationError, match="cron"):
        app.periodic("every day")
    with pytest.raises(RegistrationError, match="time zone"):
        app.periodic("0 7 * * *", tz="Mars/Olympus")


def test_periodic__a_parameter_kwargs_does_not_give__refused_at_registration(app):
    with pytest.raises(RegistrationError, match=r"'needs'.*'x'"):
        @app.periodic("* * * * *")
        def needs(ctx: Context, x: int) -> None: ...
    assert "needs" not in app.tasks and not app.schedules

    @app.periodic("* * * * *", kwargs={"x": 3})
    def given(ctx: Context, x: int) -> None: ...
    assert app.schedules[0].kwargs == {"x": 3}


@pytest.mark.parametrize(("options", "message"), [
    ({"kwargs": [1]}, r"kwargs must be None or a dict of the task's arguments by name \(str keys\), not \[1\]"),
    ({"kwargs": {1: 2}}, r"kwargs must be None or a dict .*, not \{1: 2\}"),
    ({"args": [1]}, r"periodic: unknown option 'args'; a periodic task's arguments are kwargs= \(a dict\)"),
])
def test_periodic__kwargs_no_tick_could_enqueue__refused_and_nothing_registered(app, options, message):
    """``kwargs=[1]`` raised a bare TypeError and left the task registered (a second try: "already registered")."""
    with pytest.raises(RegistrationError, match=message):
        @app.periodic("* * * * *", **options)
        def fixed(ctx: Context, x: object = None) -> None: ...
    assert not app.tasks and not app.schedules


def _engine_down(tmp_path, catch_up: float) -> tuple[Path, Conveyor]:
    """An app whose SQLite file cannot be opened (a file stands where its directory goes) until
    that file is replaced by a directory, with a schedule firing every second."""
    blocker = tmp_path / "engine"
    blocker.write_text("not a directory: the database cannot be opened")
    down = Conveyor(f"sqlite:///{blocker}/s.db")
    down.periodic("* * * * * */1", catch_up=catch_up, name="tick")(lambda ctx: None)
    return blocker, down


def test_backend_down__each_tick_retried_once_a_second_not_in_a_hot_loop(tmp_path, caplog):
    _, down = _engine_down(tmp_path, catch_up=60)
    asyncio.run(_run_schedulers(down, 1, 2.5))
    tries = [r for r in caplog.records if "could not enqueue tick" in r.getMessage()]
    assert 2 <= len(tries) <= 4, [r.getMessage() for r in tries]  # ≈ 1 a second (it was one per 10 ms)
    assert "retrying in 1 s" in tries[0].getMessage()
    down.close()


def test_ticks__follow_the_time_zone(app):
    @app.periodic("0 7 * * *", tz="Europe/Berlin")
    def digest(ctx: Context) -> None: ...

    schedule = app.schedules[0]
    now = 1764324000.0  # 2025-11-28 10:00 UTC = 11:00 in Berlin
    assert previous_tick(schedule, now) == 1764309600.0  # 06:00 UTC = 07:00 Berlin
    assert next_tick(schedule, now) == 1764396000.0
    assert tick_key(schedule, 1764309600.0) == "schedule:digest:2025-11-28T06:00:00Z"


def test_a_task_named_in_other_letters_or_at_length__its_ticks_enqueue(app):
    """Keys are printable ASCII: a tick of `envoyer_reçu` (a valid Python name) was refused."""
    names = ["envoyer_reçu", "x" * 200, "ç" * 200]  # the longest name a task may have; its escapes are longer
    for name in names:
        app.periodic("0 7 * * *", name=name, catch_up=None)(lambda ctx: None)

    async def scenario():
        await _run_schedulers(app, 1, 0.2)
        backend = await app.backend()
        return [(await backend.list_jobs(JobQuery(task=name))).items for name in names]

    assert [len(items) for items in asyncio.run(scenario())] == [1, 1, 1]


async def _run_schedulers(app: Conveyor, count: int, seconds: float) -> None:
    stop = asyncio.Event()
    runners = [asyncio.create_task(run_scheduler(app, stop)) for _ in range(count)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*runners)


def test_two_schedulers_over_two_ticks__exactly_two_jobs(app):
    @app.periodic("* * * * * */1", catch_up=0)  # every second (croniter's seconds field)
    def tick(ctx: Context) -> None: ...

    async def scenario():
        start = time.time()
        await asyncio.sleep(1 - start % 1 + 0.05)  # begin just after a tick: catch_up=0 skips it
        await _run_schedulers(app, 2, 2.4)  # two schedulers see the next two ticks
        backend = await app.backend()
        return (await backend.list_jobs(JobQuery(task="tick"))).items

    jobs = asyncio.run(scenario())
    keys = sorted(j.idempotency_key for j in jobs)
    assert len(keys) == 2 and len(set(keys)) == 2


def test_catch_up__the_last_missed_tick_runs_once_older_ones_are_skipped(app):
    @app.periodic("0 * * * *", catch_up=None)  # hourly: the last tick was up to an hour ago
    def hourly(ctx: Context) -> None: ...

    async def scenario():
        await _run_schedulers(app, 1, 0.2)
        await _run_schedulers(app, 1, 0.2)  # a restart finds the tick already enqueued
        backend = await app.backend()
        return (await backend.list_jobs(JobQuery(task="hourly"))).items

    jobs = asyncio.run(scenario())
    assert len(jobs) == 1
    assert jobs[0].metadata["tick"] == previous_tick(app.schedules[0], time.time())


def test_catch_up__a_tick_too_old_to_run__the_log_says_when_the_next_one_is(app, caplog):
    """At a first start the daily tick of this morning is routinely past catching up: saying only
    "skipped" left users wondering whether the schedule would ever run."""
    hour = (datetime.now(ZoneInfo("UTC")).hour - 2) % 24  # today's tick is 2 to 3 hours old

    @app.periodic(f"0 {hour} * * *", tz="UTC", catch_up=60)
    def daily(ctx: Context) -> None: ...

    now = time.time()
    with caplog.at_level("INFO", logger="conveyor.scheduler"):
        asyncio.run(_run_schedulers(app, 1, 0.2))
    [said] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("schedule daily:")]
    upcoming = datetime.fromtimestamp(next_tick(app.schedules[0], now), ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "not run" in said and "catch_up is 60 s" in said and f"next tick {upcoming}" in said, said


# -- a schedule that cannot fire is refused at registration, never at the scheduler ------------
@pytest.mark.parametrize(
    ("cron", "options", "message"),
    [
        ("0 0 31 2 *", {}, "never fires"),  # February 31st
        ("0 7 * * *", {"catch_up": "1h"}, "catch_up must be None or a number of seconds"),
        ("0 7 * * *", {"catch_up": -5}, "catch_up must be None or a number of seconds"),
        ("0 7 * * *", {"tz": None}, "a time zone is a name"),
        ("0 7 * * *", {"tz": "Europe"}, "unknown time zone"),
        ("R * * * *", {}, "random"),  # each scheduler would draw its own minute
        ("R(0-30) 7 * * *", {}, "random"),
        ("* * * * * * *", {}, "7 fields"),
        ("0 0 7 * * *", {}, "the 6th field is the seconds"),  # Quartz's 07:00: every second of a minute here
    ],
)
def test_periodic__a_schedule_that_cannot_fire_is_refused(app, cron, options, message):
    with pytest.raises(RegistrationError, match=message):
        @app.periodic(cron, **options)
        def job(ctx: Context) -> None: ...
    assert not app.tasks and not app.schedules


def test_periodic__macros_leap_days_and_month_names_are_accepted(app):
    accepted = ["@hourly", "@daily", "0 0 29 2 *", "0 7 * jan-mar mon-fri", "* * * * * */5"]
    for i, cron in enumerate(accepted):
        app.periodic(cron, name=f"p{i}")(lambda ctx: None)
    assert [s.cron for s in app.schedules] == accepted


def test_scheduler__a_broken_schedule_is_logged_the_others_keep_firing(app, caplog):
    @app.periodic("* * * * * */1", catch_up=0)
    def fine(ctx: Context) -> None: ...

    # built by hand, past periodic's checks: the scheduler must still not let them stop `fine`
    app.tasks["never"] = app.tasks["nowhere"] = app.tasks["fine"]
    app.schedules += [Schedule("never", "0 0 31 2 *"), Schedule("nowhere", "* * * * *", "Mars/Olympus")]

    async def scenario():
        await _run_schedulers(app, 1, 2.5)
        return (await (await app.backend()).list_jobs(JobQuery(task="fine"))).items

    assert len(asyncio.run(scenario())) >= 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, errors  # once each, with the schedule's name
    assert "schedule never" in errors[0] and "schedule nowhere" in errors[1]


# -- DST: a daily schedule runs once a day; an hourly one in both passes of a repeated hour ------
def _ticks(cron: str, tz: str, start: str, end: str) -> list[str]:
    schedule, zone = Schedule("t", cron, tz), ZoneInfo(tz)
    t, stop, out = datetime.fromisoformat(start).timestamp(), datetime.fromisoformat(end).timestamp(), []
    while (t := next_tick(schedule, t)) < stop:
        out.append(datetime.fromtimestamp(t, zone).isoformat())
    return out


def test_dst_fall_back__a_daily_schedule_fires_once_that_day():
    assert _ticks("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00+00:00", "2026-10-26T12:00+00:00") == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    assert _ticks("30 1 * * *", "America/New_York", "2026-10-31T12:00+00:00", "2026-11-02T12:00+00:00") == [
        "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    # a scheduler (re)started in the repeated hour takes the first pass as the day's tick, too
    second_pass = datetime.fromisoformat("2026-10-25T02:45:00+01:00").timestamp()
    assert previous_tick(Schedule("t", "30 2 * * *", "Europe/Berlin"), second_pass) == (
        datetime.fromisoformat("2026-10-25T02:30:00+02:00").timestamp())


def test_dst_fall_back__an_hourly_schedule_fires_in_both_passes():
    assert _ticks("0 * * * *", "Europe/Berlin", "2026-10-25T00:30+02:00", "2026-10-25T03:30+01:00") == [
        "2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00"]


def test_dst_spring_forward__a_skipped_time_fires_once_right_after_the_gap():
    assert _ticks("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00+00:00", "2026-03-30T12:00+00:00") == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


# -- one run per tick, however many restarts ----------------------------------------------
def test_restarts__a_queue_keeping_no_records__the_tick_runs_at_most_once(app):
    app.queue("reports", result_ttl=0)  # finished records are deleted at once: so is the tick's key
    runs: list[str | None] = []

    @app.periodic("0 * * * *", queue="reports")  # hourly; the default catch_up is an hour
    def hourly(ctx: Context) -> None:
        runs.append(ctx.job.idempotency_key)

    async def run_worker_for(seconds: float) -> None:
        worker = Worker(app, concurrency=1)
        asyncio.get_running_loop().call_later(seconds, worker.stop)
        await asyncio.wait_for(worker.run(), seconds + 30)

    for _ in range(3):  # a rolling restart: each worker sweeps the finished record away
        asyncio.run(run_worker_for(2.5))
    assert len(runs) <= 1, runs  # it ran once per restart


# -- an engine outage does not send out a tick older than catch_up ---------------------------
def test_outage__when_the_engine_is_back_no_tick_older_than_catch_up_is_enqueued(tmp_path):
    gone, app = _engine_down(tmp_path, catch_up=1)

    async def scenario():
        stop = asyncio.Event()
        runner = asyncio.create_task(run_scheduler(app, stop))
        await asyncio.sleep(4.2)  # the engine is down: every tick of these seconds fails
        gone.unlink()
        gone.mkdir()  # the engine is back
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(runner, 10)
        return (await (await app.backend()).list_jobs(JobQuery(task="tick"))).items

    jobs = asyncio.run(scenario())
    assert jobs
    ages = [j.created_at - j.metadata["tick"] for j in jobs]
    assert max(ages) <= 2.5, ages  # not the 4-second-old tick the outage began with
    app.close()
