"""ThreadPool.start: cheap calls share a thread hand-off, but never wait long behind a slow one."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.core.context import Context
from conveyor.core.job import Job
from conveyor.worker.pools import Call, ThreadPool


class Probe(Call):
    __slots__ = ("done", "fn", "result", "started_at", "thread")

    def __init__(self, key: object, fn: Any) -> None:
        super().__init__(Context(Job(id="j", task="t")), key)
        self.fn = fn
        self.done = asyncio.get_running_loop().create_future()
        self.started_at = 0.0
        self.thread = ""

    def run(self) -> Any:
        self.started_at = time.monotonic()
        self.thread = threading.current_thread().name
        return self.fn()

    def finished(self, result: Any, error: BaseException | None) -> None:
        self.done.set_result((result, error))


async def _warm(pool: ThreadPool, key: object) -> None:
    probe = Probe(key, lambda: None)
    pool.start([probe])
    await probe.done  # measured now; pinned below so that a stray GIL wait cannot make it look slow
    pool._cost[key] = 1e-6


def test_cheap_calls_run_in_one_hand_off_and_report_on_the_loop():
    async def main() -> None:
        pool = ThreadPool(8)
        await _warm(pool, "cheap")
        probes = [Probe("cheap", lambda i=i: i) for i in range(8)]
        pool.start(probes)
        results = await asyncio.gather(*(p.done for p in probes))
        assert results == [(i, None) for i in range(8)]
        assert len({p.thread for p in probes}) == 1  # one thread ran the group
        await pool.close()

    asyncio.run(main())


def test_a_slow_call_in_a_group_does_not_hold_back_the_others():
    async def main() -> None:
        pool = ThreadPool(8)
        await _warm(pool, "usually-cheap")
        gate = threading.Event()
        slow = Probe("usually-cheap", lambda: gate.wait(5))
        rest = [Probe("usually-cheap", lambda: None) for _ in range(5)]
        t0 = time.monotonic()
        pool.start([slow, *rest])
        await asyncio.wait_for(asyncio.gather(*(p.done for p in rest)), 2)
        assert max(p.started_at for p in rest) - t0 < 0.5  # taken over by other threads
        gate.set()
        assert await slow.done == (True, None)
        await pool.close()

    asyncio.run(main())


def test_errors_come_back_and_a_call_cancelled_before_it_starts_never_runs():
    async def main() -> None:
        pool = ThreadPool(2)
        failing = Probe("k", lambda: 1 / 0)
        pool.start([failing])
        result, error = await failing.done
        assert result is None and isinstance(error, ZeroDivisionError)
        ran: list[int] = []
        skipped = Probe("k", lambda: ran.append(1))
        skipped.ctx.request_cancel()
        marker = Probe("k", lambda: "after")
        pool.start([skipped, marker])
        assert await marker.done == ("after", None)
        await asyncio.sleep(0.05)
        assert not ran and not skipped.done.done()
        await pool.close()

    asyncio.run(main())


def test_run_past_its_time_limit__keeps_its_slot_until_the_thread_returns(caplog: pytest.LogCaptureFixture):
    """A dependent job's sync code runs through ``ThreadPool.run``: past its time limit it raises
    ``TimeoutError`` at once, but its thread runs on, so the worker must count it as running
    (``overrunning``) until it returns, and hear when it does."""
    app = Conveyor("sqlite:///:memory:")
    gate = threading.Event()

    @app.task
    def stuck(ctx: Context) -> str:
        gate.wait(5)
        return "late"

    async def main() -> None:
        freed = asyncio.Event()
        pool = ThreadPool(2, on_returned=freed.set)
        ctx = Context(Job(id="j1", task="stuck"))
        with pytest.raises(TimeoutError):
            await pool.run(stuck, [], {}, ctx, 0.1)
        assert ctx.cancelled and pool.overrunning == 1
        await asyncio.sleep(0.2)
        assert pool.overrunning == 1 and not freed.is_set()  # still running: still counted
        gate.set()
        await asyncio.wait_for(freed.wait(), 5)
        assert pool.overrunning == 0
        assert await pool.run(stuck, [], {}, Context(Job(id="j2", task="stuck")), 1.0) == "late"
        await pool.close()

    with caplog.at_level(logging.WARNING, logger="conveyor.worker.pools"):
        asyncio.run(main())
    assert "job j1 (stuck) attempt 1 passed its time limit" in caplog.text
    app.close()


def test_given_up_before_a_thread_took_it__never_runs_and_its_slot_is_free():
    async def main() -> None:
        freed = asyncio.Event()
        pool = ThreadPool(1, on_returned=freed.set)
        ran: list[int] = []
        waiting = Probe("k", lambda: ran.append(1))
        waiting.ctx.request_cancel()  # cancelled before any thread took it (it waited behind others)
        pool.give_up(waiting, timed_out=False)
        assert pool.overrunning == 1
        pool.start([waiting])
        await asyncio.wait_for(freed.wait(), 5)
        assert pool.overrunning == 0 and not ran and not waiting.done.done()
        await pool.close()

    asyncio.run(main())
