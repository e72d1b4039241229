"""A job's webhook reaches a local receiver, signed per Standard Webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tests.api.conftest import Server, WorkerThread, free_port, make_app, wait_for

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


class Receiver:
    """A tiny HTTP server that records every POST (headers and body)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.httpd = HTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def verify(headers: dict[str, str], body: bytes, key: bytes) -> bool:
    """Standard Webhooks verification, written from the spec (not with Conveyor's code)."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig.split(",", 1)[1] == expected for sig in headers["webhook-signature"].split())


def test_webhook__terminal_job__signed_post_received(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", SECRET)
    receiver = Receiver()
    worker = WorkerThread(make_app(server.app.url), concurrency=2)
    try:
        hook = f"http://127.0.0.1:{receiver.port}/hook"
        job = server.http.post("/v1/jobs", json={"task": "add", "args": [2, 3], "webhook": hook}).json()
        wait_for(lambda: receiver.received, timeout=15)
        headers, body = receiver.received[0]
        assert verify(headers, body, KEY)
        assert not verify(headers, body, b"another key")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
        payload = json.loads(body)
        assert payload["id"] == job["id"] and payload["result"] == 5  # the job JSON itself (SPEC §6)
        assert payload["status"] == "succeeded" and set(payload) == set(server.http.get(f"/v1/jobs/{job['id']}").json())
    finally:
        worker.stop()
        receiver.stop()

