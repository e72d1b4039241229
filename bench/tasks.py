"""The no-op tasks every benchmark runs (``bench.tasks:app``)."""

from __future__ import annotations

from conveyor import Context, Conveyor

app = Conveyor()  # CONVEYOR_URL


@app.task
def noop(ctx: Context) -> None:
    return None


@app.task
async def anoop(ctx: Context) -> None:
    return None
