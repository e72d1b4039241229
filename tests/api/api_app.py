"""Tasks for the API tests; worker subprocesses import this as ``tests.api.api_app:app``."""

from __future__ import annotations

import time

from conveyor import Context, Conveyor

app = Conveyor()  # CONVEYOR_URL of the test
app.queue("media", visibility_timeout=60)


@app.task
def add(ctx: Context, a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.task(queue="media", max_retries=5, timeout=3600)
def transcode(ctx: Context, path: str, height: int) -> str:
    ctx.progress(0.1, "probing")
    return f"out/{height}p.mp4"


@app.task
def steps(ctx: Context, n: int, pause: float = 0.05) -> int:
    """Report progress ``n`` times, ``pause`` seconds apart."""
    for i in range(n):
        time.sleep(pause)
        ctx.progress((i + 1) / n, f"step {i + 1}")
    return n


@app.task(max_retries=0)
def boom(ctx: Context) -> None:
    raise ValueError("boom")


@app.task
def sleepy(ctx: Context, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.02)
    return seconds
