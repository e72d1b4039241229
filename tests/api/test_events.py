"""Server-Sent Events over a real socket: every change, resume, 204, keep-alive, latency, one watcher."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx

from conveyor import Conveyor
from conveyor.api.events import Watcher, stream
from tests.api.conftest import Server, WorkerThread, wait_for


class Stream:
    """Reads one event stream in a thread, recording (arrival time, kind, payload)."""

    def __init__(self, url: str, job_id: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self.status: int | None = None
        self.done = threading.Event()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(url, job_id, headers or {}), daemon=True)
        self.thread.start()

    def _read(self, url: str, job_id: str, headers: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=15) as r:
                self.status = r.status_code
                self.content_type = r.headers.get("content-type", "")
                self.connected.set()
                fields: dict[str, str] = {}
                for line in r.iter_lines():
                    if line.startswith(":"):
                        self.events.append((time.monotonic(), "comment", line))
                    elif line == "":
                        if fields:
                            self.events.append((time.monotonic(), fields.get("event", ""), fields))
                        fields = {}
                    else:
                        key, _, value = line.partition(":")
                        fields[key] = value.removeprefix(" ")
        finally:
            self.connected.set()
            self.done.set()

    def jobs(self) -> list[dict[str, Any]]:
        return [json.loads(f["data"]) for _, kind, f in self.events if kind == "job"]

    def ids(self) -> list[int]:
        return [int(f["id"]) for _, kind, f in self.events if kind == "job"]


def test_events__every_change_then_end(server: Server, worker: WorkerThread) -> None:
    job = server.http.post("/v1/jobs", json={"task": "steps", "args": [3], "kwargs": {"pause": 0.3}}).json()
    stream = Stream(server.url, job["id"])
    assert stream.done.wait(15), "stream did not end after the terminal status"
    assert stream.status == 200 and stream.content_type.startswith("text/event-stream")
    jobs = stream.jobs()
    statuses = [j["status"] for j in jobs]
    assert statuses[0] in ("queued", "running") and statuses[-1] == "succeeded"
    fractions = [j["progress"]["fraction"] for j in jobs if j["progress"] and j["status"] == "running"]
    assert len(fractions) >= 2 and fractions == sorted(fractions)  # progress events, not only status
    assert stream.ids() == sorted(set(stream.ids()))  # increasing revisions, one event each


def test_events__last_event_id_of_terminal__204(server: Server) -> None:
    job = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).json()
    done = server.http.post(f"/v1/jobs/{job['id']}/cancel").json()
    revision = int(server.http.get(f"/v1/jobs/{job['id']}").headers["etag"].strip('"'))
    r = server.http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(revision)})
    assert r.status_code == 204 and done["status"] == "cancelled"
    # an older id: the current (terminal) state at once, then the end
    stream = Stream(server.url, job["id"], {"Last-Event-ID": str(revision - 1)})
    assert stream.done.wait(5)
    assert [j["status"] for j in stream.jobs()] == ["cancelled"] and stream.ids() == [revision]


def test_events__last_event_id_not_a_revision__whole_stream_not_500(server: Server) -> None:
    job = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).json()
    server.http.post(f"/v1/jobs/{job['id']}/cancel")
    # "²" (Latin-1 0xB2) is a digit to str.isdigit, and int() refuses more than 4300 digits
    for header in (b"\xb2", b"1\xb3", b"9" * 5000):
        r = server.http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": header})
        assert r.status_code == 200, (header[:10], r.status_code, r.text[:200])
        assert '"status":"cancelled"' in r.text  # taken as no id: the current state, then the end


def test_events__last_event_id_the_job_never_reached__whole_stream(server: Server) -> None:
    """An id beyond the job's revision (another job's, a stale client's) was never sent on this
    stream: it starts over. A pending job's stream sent nothing, then ended without its terminal
    event; a finished job's said 204, "you saw the end", to a client that never did."""
    job = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2], "delay": 600}).json()
    stream = Stream(server.url, job["id"], {"Last-Event-ID": "1000"})
    wait_for(stream.jobs, timeout=5)
    assert [j["status"] for j in stream.jobs()] == ["scheduled"]
    server.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert stream.done.wait(5)
    assert [j["status"] for j in stream.jobs()] == ["scheduled", "cancelled"]
    revision = stream.ids()[-1]
    r = server.http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(revision + 1)})
    assert r.status_code == 200 and '"status":"cancelled"' in r.text
    r = server.http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(revision)})
    assert r.status_code == 204


def test_events__resume_with_current_id__waits_for_the_next_change(server: Server) -> None:
    job = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).json()
    revision = int(server.http.get(f"/v1/jobs/{job['id']}").headers["etag"].strip('"'))
    stream = Stream(server.url, job["id"], {"Last-Event-ID": str(revision)})
    assert stream.connected.wait(5)
    time.sleep(0.3)
    assert stream.jobs() == []  # nothing new yet: no repeat of what the client saw
    server.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert stream.done.wait(5)
    assert [j["status"] for j in stream.jobs()] == ["cancelled"]


def test_events__change_reaches_client_within_250ms(server: Server) -> None:
    job = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).json()
    stream = Stream(server.url, job["id"])
    wait_for(lambda: stream.jobs(), timeout=5)
    time.sleep(0.2)
    sent = time.monotonic()
    server.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert stream.done.wait(5)
    arrived = [t for t, kind, f in stream.events if kind == "job" and json.loads(f["data"])["status"] == "cancelled"]
    latency = arrived[0] - sent
    assert latency < 0.25, f"{latency * 1000:.0f} ms"


def test_events__keepalive_comment_on_idle_stream(app) -> None:  # type: ignore[no-untyped-def]
    server = Server(app, tokens="", keepalive=0.2)
    try:
        job = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).json()
        stream = Stream(server.url, job["id"])
        wait_for(lambda: any(kind == "comment" for _, kind, _ in stream.events), timeout=5)
        server.http.post(f"/v1/jobs/{job['id']}/cancel")
        assert stream.done.wait(5)
    finally:
        server.stop()


def test_events__one_watcher_polls_once_per_tick_for_many_clients(server: Server) -> None:
    jobs = [server.http.post("/v1/jobs", json={"task": "add", "args": [i, 1]}).json() for i in range(20)]
    streams = [Stream(server.url, j["id"]) for j in jobs]
    wait_for(lambda: all(s.jobs() for s in streams), timeout=5)
    watcher = server.api.state.conveyor.watcher
    before, start = watcher.polls, time.monotonic()
    time.sleep(1.0)
    polls = watcher.polls - before
    ticks = (time.monotonic() - start) / watcher.interval
    assert polls <= ticks + 2, (polls, ticks)  # one query per tick, not one per client
    for j in jobs:
        server.http.post(f"/v1/jobs/{j['id']}/cancel")
    assert all(s.done.wait(5) for s in streams)


def test_events__unknown_job__404(server: Server) -> None:
    r = server.http.get("/v1/jobs/01a22233-d0de-71e6-b821-e3be6140d5a1/events")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_events__second_subscriber_reads_a_change_first__first_still_gets_it_and_ends(app: Conveyor) -> None:
    async def main() -> tuple[list[str], str, list[str]]:
        watcher = Watcher(app.backend, interval=3600)  # one poll at start; the rest by hand
        backend = await app.backend()
        try:
            job_id = (await app.enqueue_async("add", [1, 2])).id
            first = stream(watcher, (await backend.get_jobs([job_id]))[0], None)
            assert (await anext(first)).startswith("retry:") and "queued" in await anext(first)
            await asyncio.wait_for(_polled(watcher), 5)
            await backend.cancel(job_id, time.time())  # a change the watcher has not sent yet...
            second = stream(watcher, (await backend.get_jobs([job_id]))[0], None)  # ...that B reads
            seen = [frame async for frame in second]
            await watcher.poll()  # the next tick
            frame = await asyncio.wait_for(anext(first), 5)
            rest = await asyncio.wait_for(_drain(first), 5)
            return seen, frame, rest
        finally:
            await watcher.close()
            await app.aclose()

    seen_by_b, next_of_a, rest_of_a = asyncio.run(main())
    assert '"status":"cancelled"' in seen_by_b[-1].replace(" ", "")
    assert '"status":"cancelled"' in next_of_a.replace(" ", ""), next_of_a  # A got the terminal event
    assert rest_of_a == []  # and its stream ended there


async def _polled(watcher: Watcher) -> None:
    while watcher.polls < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the first poll's queries are done


async def _drain(frames: Any) -> list[str]:
    return [f async for f in frames]
