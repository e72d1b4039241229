"""Webhooks: a signed POST of the job JSON on its terminal status (Standard Webhooks).

Deliveries come from the backend's outbox (a job turning terminal with a ``webhook`` is
pending in the same write), so a delivery pending when a process dies is still made.
Retries back off from 5 s to 1 h, then give up after ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from conveyor.backends.base import Backend
from conveyor.core.errors import ConfigurationError
from conveyor.core.job import Job
from conveyor.serialization import dumps

log = logging.getLogger(__name__)

SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 3600.0, 3600.0)  #: seconds between attempts
MAX_ATTEMPTS = len(SCHEDULE) + 1
TIMEOUT = 15.0  #: seconds per attempt


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


def host_allowed(url: str) -> bool:
    allowed = [h.strip().lower() for h in os.environ.get("CONVEYOR_WEBHOOK_ALLOWED_HOSTS", "").split(",") if h.strip()]
    return not allowed or (urlsplit(url).hostname or "").lower() in allowed


async def send(client: httpx.AsyncClient, job: Job, key: bytes | None) -> bool:
    """POST one delivery; True on a 2xx answer."""
    assert job.webhook is not None
    if not host_allowed(job.webhook):
        log.warning("job %s: webhook host not allowed; not sent", job.id)
        return True  # never retried: it will not become allowed by waiting
    body = dumps(payload(job))
    msg_id = f"msg_{job.id}"
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        headers["webhook-signature"] = sign(key, msg_id, timestamp, body)
    try:
        response = await client.post(job.webhook, content=body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        log.info("job %s: webhook failed: %s", job.id, exc)
        return False
    return 200 <= response.status_code < 300


async def deliver_due(backend: Backend, now: float, limit: int = 20) -> int:
    """Send the due deliveries of the outbox; how many were attempted."""
    due = await backend.due_webhooks(now, limit, lease=TIMEOUT * 2)
    if not due:
        return 0
    key = secret_key()
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        for job, attempts in due:
            ok = await send(client, job, key)
            done = ok or attempts + 1 >= MAX_ATTEMPTS
            next_at = None if done else time.time() + SCHEDULE[min(attempts, len(SCHEDULE) - 1)]
            await backend.webhook_attempted(job.id, ok, next_at)
    return len(due)
