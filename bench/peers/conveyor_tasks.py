"""Conveyor's no-ops for the side-by-side run: the same single RPUSH as every peer's.

``noop`` runs in the default thread pool; ``anoop`` on the event loop (``--pool async``).
Conveyor also records every job's full state (status, attempts, timestamps, result)."""

from __future__ import annotations

from bench.peers._record import arecord, record
from conveyor import Context, Conveyor

DB = 0  # Conveyor itself runs under a unique prefix in db 0 (CONVEYOR_URL)

app = Conveyor()  # CONVEYOR_URL


@app.task
def noop(ctx: Context, t: float = 0.0) -> None:
    record(t, DB)


@app.task
async def anoop(ctx: Context, t: float = 0.0) -> None:
    await arecord(t, DB)
