"""The no-op tasks every benchmark runs (``bench.tasks:app``)."""

from __future__ import annotations

import time

from conveyor import Context, Conveyor

app = Conveyor()  # CONVEYOR_URL


@app.task
def noop(ctx: Context) -> None:
    return None


@app.task
async def anoop(ctx: Context) -> None:
    return None


@app.task
def stamp(ctx: Context) -> float:
    """When the task really began, for the idle latency (``started_at`` is when it was leased)."""
    return time.time()
