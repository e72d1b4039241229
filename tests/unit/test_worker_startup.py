"""A worker whose engine goes away while it starts up waits for it instead of exiting."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.core.errors import BackendUnavailable
from conveyor.core.job import Status
from conveyor.worker.worker import Worker


class OutageAfterOpen(SQLiteBackend):
    """A real SQLite engine that answers ``open`` and then is unreachable for ``outage`` calls."""

    def __init__(self, url: str, outage: int) -> None:
        super().__init__(url)
        self.outage = outage

    async def queue_settings(self, name: str) -> Any:
        if self.outage > 0:
            self.outage -= 1
            raise BackendUnavailable("the engine is restarting")
        return await super().queue_settings(name)


def test_outage_during_startup__worker_retries_then_runs_the_job(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    url = f"sqlite:///{tmp_path}/startup.db"
    app = Conveyor(url)

    @app.task
    def double(ctx: Context, x: int) -> int:
        return 2 * x

    handle = double.enqueue(21)
    backend = OutageAfterOpen(url, outage=3)
    worker = Worker(app, backend=backend, burst=True, scheduler=False)

    with caplog.at_level(logging.WARNING, logger="conveyor.worker.worker"):
        code = asyncio.run(asyncio.wait_for(worker.run(), 30))

    assert code == 0
    assert backend.outage == 0
    assert sum("cannot register" in r.getMessage() for r in caplog.records) == 3
    job = handle.refresh()
    assert (job.status, job.result) == (Status.SUCCEEDED, 42)
    app.close()


def test_stopped_while_waiting_for_the_engine__exits_cleanly(tmp_path: Path):
    app = Conveyor(f"sqlite:///{tmp_path}/stop.db")
    backend = OutageAfterOpen(app.url, outage=10**6)
    worker = Worker(app, backend=backend, scheduler=False)

    async def main() -> int:
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)
        worker.stop()
        return await asyncio.wait_for(run, 10)

    assert asyncio.run(main()) == 0
    app.close()
