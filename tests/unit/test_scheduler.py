"""Periodic tasks: ticks, keys, catch-up after downtime, and exactly one job per tick."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor import Context, Conveyor
from conveyor.backends.base import JobQuery
from conveyor.core.errors import RegistrationError
from conveyor.scheduler import next_tick, previous_tick, run_scheduler, tick_key


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


def test_backend_down__each_tick_retried_once_a_second_not_in_a_hot_loop(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    down = Conveyor(f"sqlite:///{blocker}/sub/s.db")

    @down.periodic("* * * * * */1", catch_up=60)
    def tick(ctx: Context) -> None: ...

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
