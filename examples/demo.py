"""The demo app: the kinds of work that belong in the background.

Run it with ``conveyor up --app examples.demo:app`` and submit jobs over HTTP or the CLI:

    conveyor submit provision_server '"web-1"' --kwargs '{"region": "eu-west"}'
    conveyor submit send_order_confirmation 1042 '"ada@example.com"'
    conveyor submit transcode '"in/cat.mp4"' 480
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from conveyor import Context, Conveyor

log = logging.getLogger("demo")

app = Conveyor()  # CONVEYOR_URL, else sqlite:///conveyor.db in the working directory

app.queue("media", visibility_timeout=60, max_deliveries=5)
app.queue("emails", retention=86400)


@app.task(queue="provisioning", max_retries=2, timeout=120)
def provision_server(ctx: Context, name: str, region: str = "eu-west", size: str = "small") -> dict[str, str]:
    """Spin up a server: about 20 s of steps, reporting progress as it goes."""
    steps = ["allocating", "booting image", "configuring network", "installing packages", "health checks"]
    for i, step in enumerate(steps):
        ctx.progress(i / len(steps), step)
        for _ in range(8):  # 4 s per step, in small sleeps so a cancel is noticed quickly
            ctx.raise_if_cancelled()
            time.sleep(0.5)
    ctx.progress(1.0, "ready")
    return {"name": name, "region": region, "size": size, "address": f"{name}.{region}.example.net"}


@app.task(queue="emails", max_retries=5)
async def send_order_confirmation(ctx: Context, order_id: int, email: str) -> dict[str, object]:
    """Send the confirmation of an order (written to ./outbox/ instead of a mail server)."""
    if "@" not in email:
        raise ValueError(f"not an email address: {email!r}")
    await asyncio.sleep(0.2)  # the mail server's round trip
    outbox = Path("outbox")
    outbox.mkdir(exist_ok=True)
    message = outbox / f"order-{order_id}.txt"
    message.write_text(f"To: {email}\nSubject: Order #{order_id} confirmed\n\nThank you for your order!\n")
    return {"order_id": order_id, "to": email, "file": str(message)}


@app.task(queue="media", timeout=600)
def transcode(ctx: Context, path: str, height: int) -> str:
    """"Transcode" an upload to one height (simulated: a few seconds of progress)."""
    if height not in (240, 360, 480, 720, 1080):
        raise ValueError(f"unsupported height {height}")
    frames = 20
    for frame in range(frames):
        ctx.raise_if_cancelled()
        time.sleep(height / 720 * 0.15)
        ctx.progress((frame + 1) / frames, f"encoding {height}p")
    stem = Path(path).stem
    return f"out/{stem}-{height}p.mp4"


@app.task(queue="media")
def publish(ctx: Context, path: str) -> dict[str, object]:
    """Runs after the transcodes it depends on: collects their outputs."""
    renditions = sorted(str(r) for r in ctx.parent_results.values())
    return {"source": path, "renditions": renditions}


def transcode_upload(path: str) -> list[str]:
    """Fan out one upload into three sizes, then publish when all three are done."""
    sizes = transcode.enqueue_many([{"path": path, "height": h} for h in (360, 480, 720)])
    done = publish.enqueue(path, depends_on=sizes)
    return [j.id for j in [*sizes, done]]


@app.periodic("0 7 * * *", tz="UTC")
def morning_digest(ctx: Context) -> str:
    """Once a day: a summary e-mail (here: a log line)."""
    log.info("sending the morning digest")
    return "digest sent"
