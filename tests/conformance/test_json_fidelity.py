"""JSON values come back exactly as they were given, on every engine: a float stays a float (1e16,
the largest double, -0.0 with its sign), an integer beyond 2**53 stays exact, an object keeps its
key order. In the job as enqueue returns it and as it is read back, in what the task is given,
and in its progress and result."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import Context, Conveyor, serialization
from conveyor.backends import create_backend
from conveyor.backends.base import Backend
from conveyor.core.job import Status
from conveyor.worker.worker import Worker

#: Numbers an engine that stores them as decimals rewrites (1e16 as the integer 10000000000000000,
#: -0.0 as 0.0), beside their neighbours of other types.
NUMBERS: list[Any] = [1e16, -0.0, 1.7976931348623157e308, 0.1, 2**53 + 1, 10**30, -(10**30), 5e-324, 1.0, 0, 1,
                      True, None, "1e16"]
#: The same nested, in objects whose keys are not in sorted order.
NESTED: dict[str, Any] = {"z": {"float": 1e16, "big": 10**30},
                          "a": [-0.0, [1.7976931348623157e308, {"exact": 2**53 + 1}]], "m": 0.1}


def assert_exact(read: Any, given: Any) -> None:
    """``read`` is ``given``: the same JSON text, so the same types, values, signs and key order."""
    assert serialization.dumps(read) == serialization.dumps(given)


def _app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.task
    def echo(ctx: Context, numbers: list[Any], nested: dict[str, Any]) -> dict[str, Any]:
        ctx.progress(-0.0, "started")
        return {"numbers": numbers, "nested": nested}

    return app


async def _round_trip(backend: Backend) -> None:
    """Enqueue through the Python API, read the job back, run it with a worker, read its result."""
    app = _app(backend.url)
    app.bind(backend)
    handle = await app.tasks["echo"].enqueue_async(NUMBERS, nested=NESTED, metadata=NESTED)
    read = await app.get_job_async(handle.id)
    assert read is not None

    for job in (handle.job, read.job):  # what enqueue returned (the 202's body), and the stored job
        assert_exact(job.args, [NUMBERS])
        assert_exact(job.kwargs, {"nested": NESTED})
        assert_exact(job.metadata, NESTED)
        assert math.copysign(1.0, job.args[0][1]) == -1.0

    worker = Worker(app, queues=["default"], burst=True, scheduler=False)
    assert await asyncio.wait_for(worker.run(), 30) == 0

    [done] = await backend.get_jobs([handle.id])
    assert done.status is Status.SUCCEEDED, done.error
    assert_exact(done.result, {"numbers": NUMBERS, "nested": NESTED})  # what the task was given, as it returned it
    assert done.progress is not None
    assert math.copysign(1.0, done.progress["fraction"]) == -1.0


async def test_job__exact_floats_and_big_ints__args_metadata_progress_and_result_read_back_as_given(backend):
    await _round_trip(backend)


@pytest.fixture
async def amqp_on_postgresql(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Backend]:
    """The AMQP engine with its job records in PostgreSQL (the conformance suite's AMQP engine keeps them in SQLite)."""
    namespace = f"conformance_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("CONVEYOR_STORE_URL", f"postgresql://postgres@127.0.0.1:5432/test?schema={namespace}")
    backend = create_backend(f"amqp://guest:guest@127.0.0.1:5672/?prefix={namespace}")
    await backend.open()
    yield backend
    await backend.drop()  # (its queues and the store's schema)
    await backend.close()


async def test_job__amqp_with_a_postgresql_store__read_back_as_given(amqp_on_postgresql):
    await _round_trip(amqp_on_postgresql)
