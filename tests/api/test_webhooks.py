"""A job's webhook reaches a local receiver, signed per Standard Webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conveyor.core.job import Job
from conveyor.serialization import from_rfc3339
from conveyor.webhooks import message_id, payload
from conveyor.worker.run import run_worker
from tests.api.conftest import Server, WorkerThread, free_port, make_app, wait_for

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


class Receiver:
    """A tiny HTTP server that records every POST (headers and body); ``/slow…`` answers after 5 s."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path.startswith("/slow"):
                    time.sleep(5)
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # socketserver's 5 reset some of a sender's 20 connections at once

        self.port = free_port()
        self.httpd = Server(("127.0.0.1", self.port), Handler)
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



def test_webhooks__a_broken_url_and_a_slow_endpoint__hold_up_no_other_delivery(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    base = f"http://127.0.0.1:{receiver.port}"
    with monkeypatch.context() as m:  # a record stored before enqueue refused such URLs
        m.setattr("conveyor.core.checks.check_webhook", lambda url: url)
        broken = server.app.enqueue("add", (1, 1), webhook=f"{base}/broken\t").id
    slow = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2], "webhook": f"{base}/slow"}).json()["id"]
    wait_for(lambda: server.app.get_job(slow), timeout=5)
    worker = WorkerThread(make_app(server.app.url), concurrency=2)
    try:
        wait_for(lambda: receiver.httpd.socket and server.app.get_job(slow).status == "succeeded", timeout=15)
        time.sleep(1.5)  # the slow delivery is in flight now
        good = [server.http.post("/v1/jobs", json={"task": "add", "args": [i, i], "webhook": f"{base}/ok"}).json()["id"]
                for i in range(3)]
        started = time.monotonic()
        wait_for(lambda: len([h for h in receiver.received if json.loads(h[1])["id"] in good]) == 3, timeout=15)
        assert time.monotonic() - started < 4, "the good deliveries waited for the slow one"
        wait_for(lambda: any(json.loads(b)["id"] == slow for _, b in receiver.received), timeout=15)
        assert broken not in {json.loads(b)["id"] for _, b in receiver.received}

        async def owed() -> list[str]:
            backend = await server.app.backend()
            return [j.id for j, _ in await backend.due_webhooks(time.time() + 10**6, 100, 30)]

        # the slow one is marked delivered once its answer is read, just after the receiver recorded it
        wait_for(lambda: server.app.portal.call(owed()) == [], timeout=10)  # the broken one was given up, not retried
    finally:
        worker.stop()
        receiver.stop()


def test_webhook_id__finished_at_past_half_a_millisecond__same_ms_as_the_body() -> None:
    job = Job(id="01a24d96-821f-7066-adb7-f76c034e5968", task="t", finished_at=1796673623.8639)
    body_ms = round(from_rfc3339(payload(job)["finished_at"]) * 1000)
    assert message_id(job) == f"msg_{job.id}_1796673623863" == f"msg_{job.id}_{body_ms}"  # it rounded up to …864


def test_webhook__job_retried_and_ended_again__new_webhook_id(server: Server) -> None:
    receiver = Receiver()
    worker = WorkerThread(make_app(server.app.url), concurrency=2)
    try:
        hook = f"http://127.0.0.1:{receiver.port}/hook"
        job = server.http.post("/v1/jobs", json={"task": "boom", "webhook": hook}).json()
        wait_for(lambda: len(receiver.received) == 1, timeout=15)
        assert server.http.post(f"/v1/jobs/{job['id']}/retry").status_code == 202
        wait_for(lambda: len(receiver.received) == 2, timeout=15)

        ids = [headers["webhook-id"] for headers, _ in receiver.received]
        ended = [json.loads(body)["finished_at"] for _, body in receiver.received]
        assert ids[0] != ids[1], "a receiver that drops duplicates by webhook-id would drop the second ending"
        assert all(i.startswith(f"msg_{job['id']}") for i in ids) and ended[0] != ended[1]
    finally:
        worker.stop()
        receiver.stop()


def test_webhooks__a_burst_worker_sends_what_its_jobs_owe_before_it_exits(server: Server) -> None:
    """A ``--burst`` worker (run from cron, often alone) exited without sending its jobs'
    webhooks: the receiver heard nothing until some other worker started."""
    receiver = Receiver()
    try:
        base = f"http://127.0.0.1:{receiver.port}"
        ok = [server.http.post("/v1/jobs", json={"task": "add", "args": [i, i], "webhook": f"{base}/ok"}).json()["id"]
              for i in range(25)]  # more than one sender's 20 at once
        failing = free_port()  # nothing listens: one attempt, then it is the next worker's to retry
        server.http.post("/v1/jobs", json={"task": "add", "args": [0, 0], "webhook": f"http://127.0.0.1:{failing}/"})
        started = time.monotonic()
        assert run_worker(make_app(server.app.url), burst=True, scheduler=False, concurrency=4) == 0
        assert sorted(json.loads(body)["id"] for _, body in receiver.received) == sorted(ok)
        assert time.monotonic() - started < 10, "the failed delivery held the exit up"
    finally:
        receiver.stop()
