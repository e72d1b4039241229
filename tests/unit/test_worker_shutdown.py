"""A stop does not wait out a database client's own answer to a cancel."""

from __future__ import annotations

import asyncio
import time

from conveyor.worker.worker import cancel_within


async def query_on_a_silent_server() -> None:
    """What psycopg does with a query the server never answers: a first cancel asks the server
    to cancel it and waits 10 s for that; a second cancel closes the connection at once."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(10)
        raise


async def failing() -> None:
    raise RuntimeError("the engine is gone")


def test_cancel_within__a_task_that_waits_out_its_first_cancel__ends_at_the_second() -> None:
    async def go() -> tuple[float, list[bool]]:
        tasks = [asyncio.create_task(query_on_a_silent_server()) for _ in range(3)]
        await asyncio.sleep(0)
        started = time.monotonic()
        await cancel_within(tasks, 5.0)
        return time.monotonic() - started, [t.cancelled() for t in tasks]

    took, cancelled = asyncio.run(go())
    assert cancelled == [True, True, True]
    assert took < 2.0


def test_cancel_within__a_task_that_never_ends__is_left_after_the_bound() -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue

    async def go() -> tuple[float, bool]:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        started = time.monotonic()
        await cancel_within([task], 0.3)
        took, done = time.monotonic() - started, task.done()
        released.set()  # the test's own clean-up
        await task
        return took, done

    took, done = asyncio.run(go())
    assert not done
    assert 0.25 < took < 1.0


def test_cancel_within__a_failed_task__its_error_is_taken_not_raised() -> None:
    async def go() -> bool:
        task = asyncio.create_task(failing())
        await asyncio.sleep(0)
        await cancel_within([task], 1.0)
        return task.done()

    assert asyncio.run(go())
