"""Webhooks: a signed POST of the job JSON on its terminal status (Standard Webhooks).

Deliveries come from the backend's outbox (a job turning terminal with a ``webhook`` is
pending in the same write), so a delivery pending when a process dies is still made.
Retries back off from 5 s to 1 h, then give up after ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from conveyor.backends.base import Backend
from conveyor.core.errors import ConfigurationError
from conveyor.core.job import Job
from conveyor.serialization import dumps, epoch_ms

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 3600.0, 3600.0)  #: seconds between attempts
MAX_ATTEMPTS = len(SCHEDULE) + 1
TIMEOUT = 15.0  #: seconds per attempt
MAX_IN_FLIGHT = 20  #: deliveries a sender makes at once


def secret_key(value: str | None = None) -> bytes | None:
    """The HMAC key from ``CONVEYOR_WEBHOOK_SECRET`` (``whsec_<base64>``), or None when unset."""
    value = value if value is not None else os.environ.get("CONVEYOR_WEBHOOK_SECRET")
    if not value:
        return None
    try:
        return base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ConfigurationError("CONVEYOR_WEBHOOK_SECRET must be whsec_ followed by base64") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256(id.timestamp.body)>``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(job: Job) -> dict[str, Any]:
    """The body: the job as ``GET /v1/jobs/{id}`` returns it (SPEC §6)."""
    return job.to_json()


def message_id(job: Job) -> str:
    """``webhook-id``: the same for every attempt of one delivery, new when a retried or redriven
    job ends again (receivers drop duplicates by it, and must not drop the new ending). Its
    milliseconds are those the body's ``finished_at`` shows (truncated, not rounded)."""
    ended = f"_{epoch_ms(job.finished_at)}" if job.finished_at is not None else ""
    return f"msg_{job.id}{ended}"


def host_allowed(url: str) -> bool:
    allowed = [h.strip().lower() for h in os.environ.get("CONVEYOR_WEBHOOK_ALLOWED_HOSTS", "").split(",") if h.strip()]
    return not allowed or (urlsplit(url).hostname or "").lower() in allowed


async def send(client: httpx.AsyncClient, job: Job, key: bytes | None) -> bool | None:
    """POST one delivery: True on a 2xx answer, False to try again later, None when it never can."""
    import httpx  # loaded with the first delivery: most workers send none

    assert job.webhook is not None
    if not host_allowed(job.webhook):
        log.warning("job %s: webhook host not allowed; not sent", job.id)
        return None  # it will not become allowed by waiting
    body = dumps(payload(job))
    msg_id = message_id(job)
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        headers["webhook-signature"] = sign(key, msg_id, timestamp, body)
    try:
        response = await client.post(job.webhook, content=body.encode(), headers=headers)
    except (httpx.InvalidURL, ValueError) as exc:  # enqueue refuses them; an older record may hold one
        log.warning("job %s: webhook URL is invalid (%s); not sent", job.id, exc)
        return None
    except httpx.HTTPError as exc:
        # httpx's read and protocol errors often carry no message: name the kind at least
        log.info("job %s: webhook failed: %s", job.id, str(exc) or type(exc).__name__)
        return False
    return 200 <= response.status_code < 300


class Sender:
    """Sends the outbox's due deliveries, each as its own task, at most ``MAX_IN_FLIGHT`` at once:
    a slow or broken endpoint holds up no other delivery. An attempt ends within ``TIMEOUT``, well
    inside the lease (``2 × TIMEOUT``) that hides a delivery from other senders meanwhile."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.client: httpx.AsyncClient | None = None  # made for the first delivery: most workers send none
        self.in_flight: set[asyncio.Task[None]] = set()

    async def poll(self, now: float) -> int:
        """Start the deliveries due by ``now`` that there is room for; how many were started."""
        room = MAX_IN_FLIGHT - len(self.in_flight)
        due = await self.backend.due_webhooks(now, room, lease=TIMEOUT * 2) if room > 0 else []
        key = secret_key()
        for job, attempts in due:
            task = asyncio.create_task(_deliver(self.backend, self._http(), job, attempts, key))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        return len(due)

    async def settle(self, now: float) -> None:
        """Deliver everything due by ``now``, one attempt each, and wait for the attempts to end
        (a failed one is rescheduled, so it is not due again now)."""
        while await self.poll(now) or self.in_flight:
            if self.in_flight:
                await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)

    def _http(self) -> httpx.AsyncClient:
        if self.client is None:
            import httpx

            self.client = httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)
        return self.client

    async def aclose(self) -> None:
        """Stop: an attempt cut short is made again once its lease runs out (receivers dedupe by
        ``webhook-id``)."""
        for task in self.in_flight:
            task.cancel()
        await asyncio.gather(*self.in_flight, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()


async def _deliver(backend: Backend, client: httpx.AsyncClient, job: Job, attempts: int, key: bytes | None) -> None:
    try:
        sent = await send(client, job, key)
    except Exception:
        log.exception("job %s: webhook failed", job.id)
        sent = False
    done = sent is not False or attempts + 1 >= MAX_ATTEMPTS
    next_at = None if done else time.time() + SCHEDULE[min(attempts, len(SCHEDULE) - 1)]
    try:
        await backend.webhook_attempted(job.id, bool(sent), next_at)
    except Exception as exc:  # the delivery's lease runs out and it is attempted again
        log.warning("job %s: webhook attempt not recorded: %s", job.id, exc)
