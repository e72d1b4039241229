"""conveyor.client against a real server: submit, read, list, wait, events, errors mapped back."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

# the errors a Client raises, imported as a user would: from the package itself
from conveyor import (
    BackendUnavailable,
    ConfigurationError,
    Context,
    Conveyor,
    IdempotencyKeyReused,
    InvalidArguments,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    QueueNotFound,
    UnknownTask,
    ValidationError,
)
from conveyor import client as client_module
from conveyor.client import AsyncClient, Client
from tests.api.conftest import Server, WorkerThread, free_port


def test_client__submit_wait_events(server: Server, worker: WorkerThread) -> None:
    with Client(server.url) as client:
        job = client.submit("transcode", "in/cat.mp4", height=480, priority=3)
        assert job["status"] == "queued" and job["priority"] == 3 and job["kwargs"] == {"height": 480}
        assert client.wait(job["id"], timeout=10) == "out/480p.mp4"
        assert client.get(job["id"])["status"] == "succeeded"
        states = list(client.events(client.submit("steps", 2)["id"], timeout=10))
        assert states[-1]["status"] == "succeeded"
        with pytest.raises(JobFailed):
            client.wait(client.submit("boom")["id"], timeout=10)
        jobs = client.submit_many([{"task": "add", "args": [i, 1]} for i in range(3)])
        assert [client.wait(j["id"], timeout=10) for j in jobs] == [1, 2, 3]
        assert len(client.list(task="add")["items"]) == 3


def test_client__errors_map_to_the_error_tree(server: Server) -> None:
    with Client(server.url) as client:
        with pytest.raises(UnknownTask):
            client.submit("nope")
        with pytest.raises(ValidationError) as info:
            client.submit("transcode", "x", height="tall")
        assert info.value.errors[0]["pointer"] == "#/kwargs/height"
        with pytest.raises(JobNotFound):
            client.get("01a22233-d0de-71e6-b821-e3be6140d5a1")
        job = client.submit("add", 1, 2, key="k")
        assert client.submit("add", 1, 2, key="k")["id"] == job["id"]
        with pytest.raises(IdempotencyKeyReused):
            client.submit("add", 1, 3, key="k")
        quoted = client.submit("add", 1, 2, key='"k"')  # not read as the quoted form of "k"
        assert quoted["idempotency_key"] == '"k"' and quoted["id"] != job["id"]
        with pytest.raises(InvalidTransition):
            client.retry(job["id"])
        assert client.cancel(job["id"])["status"] == "cancelled"
        assert client.retry(job["id"])["status"] == "queued"
    with Client(f"http://127.0.0.1:{free_port()}") as dead, pytest.raises(BackendUnavailable):
        dead.get("01a22233-d0de-71e6-b821-e3be6140d5a1")
    assert not issubclass(InvalidArguments, UnknownTask)


def test_client__eta_as_enqueue_reads_it__naive_datetime_is_local_time_and_a_number_epoch_seconds(
        server: Server) -> None:
    """``Client.submit(eta=...)`` refused what ``enqueue(eta=...)`` takes: a naive datetime (422:
    no UTC offset) and epoch seconds (422: "1 part(s) of the request are invalid")."""
    when = time.time() + 3600
    etas = [datetime.fromtimestamp(when), datetime.fromtimestamp(when, UTC), when, int(when)]
    with Client(server.url) as client:
        jobs = [client.submit("add", 1, 2, eta=eta) for eta in etas]

    assert [job["status"] for job in jobs] == ["scheduled"] * 4
    assert all(abs(datetime.fromisoformat(job["scheduled_at"]).timestamp() - when) < 1 for job in jobs), jobs


def test_async_client(server: Server, worker: WorkerThread) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as client:
            job = await client.submit("add", 20, 22)
            assert await client.wait(job["id"], timeout=10) == 42
            assert (await client.get(job["id"]))["result"] == 42
            with pytest.raises(UnknownTask):
                await client.submit("nope")

    asyncio.run(main())


def test_client__tasks_workers_schedules__what_the_server_lists(server: Server, worker: WorkerThread) -> None:
    @server.app.periodic("0 7 * * *", tz="Europe/Paris")
    def digest(ctx: Context) -> None: ...

    with Client(server.url) as client:
        tasks = {t["name"]: t for t in client.tasks()["items"]}
        assert tasks["transcode"]["queue"] == "media" and tasks["transcode"]["max_retries"] == 5
        assert set(tasks["add"]["parameters"]["properties"]) == {"a", "b"}
        deadline = time.monotonic() + 10
        while not (workers := client.workers()["items"]):  # registered at its first heartbeat
            assert time.monotonic() < deadline, "the worker never appeared"
            time.sleep(0.05)
        assert [(w["id"], w["concurrency"]) for w in workers] == [(worker.worker.id, worker.worker.concurrency)]
        [schedule] = client.schedules()["items"]
        assert (schedule["task"], schedule["cron"], schedule["tz"]) == ("digest", "0 7 * * *", "Europe/Paris")
        assert schedule["next_run_at"].endswith(("05:00:00.000Z", "06:00:00.000Z"))  # 7:00 in Paris, in UTC

    async def the_same_from_the_async_client() -> list[dict[str, object]]:
        async with AsyncClient(server.url) as client:
            return [await client.tasks(), await client.workers(), await client.schedules()]

    tasks_, workers_, schedules_ = asyncio.run(the_same_from_the_async_client())
    assert {t["name"] for t in tasks_["items"]} == set(tasks)  # type: ignore[index]
    assert workers_["items"][0]["id"] == worker.worker.id  # type: ignore[index]
    assert schedules_["items"][0]["task"] == "digest"  # type: ignore[index]


def test_client__mistakes_caught_before_sending__clear_errors(server: Server) -> None:
    with Client(server.url) as client:
        with pytest.raises(QueueNotFound, match="no-such-queue"):
            client.queue("no-such-queue")
        with pytest.raises(ValidationError) as key:
            client.submit("add", 1, 2, key="clé")
        assert key.value.errors[0]["parameter"] == "Idempotency-Key"
        with pytest.raises(ValidationError) as nan:
            client.submit("transcode", "x", height=float("nan"))
        assert nan.value.errors[0]["pointer"] == "#/kwargs/height"
    with pytest.raises(ConfigurationError, match="http"):
        Client("ftp://example.com")


def test_client_wait__timeout_with_keepalives__raises_on_time(app: Conveyor) -> None:
    # keep-alives 2.9 s apart reset httpx's read timeout; the job (queued, no worker) never changes
    server = Server(app, tokens="", keepalive=2.9)
    try:
        job_id = server.http.post("/v1/jobs", json={"task": "add", "args": [1, 2]}).json()["id"]

        def sync_wait() -> float:
            with Client(server.url) as client, pytest.raises(TimeoutError, match="not finished within 3 s"):
                start = time.monotonic()
                client.wait(job_id, timeout=3)
            return time.monotonic() - start

        async def main() -> None:
            async with AsyncClient(server.url) as client:
                await asyncio.wait_for(client.wait(job_id, timeout=3), 8)

        def async_wait() -> float:
            start = time.monotonic()
            with pytest.raises(TimeoutError, match="not finished within 3 s"):
                asyncio.run(main())
            return time.monotonic() - start

        with ThreadPoolExecutor(2) as pool:  # the two clients wait side by side, each timed on its own
            took = [f.result() for f in [pool.submit(sync_wait), pool.submit(async_wait)]]
        assert all(t < 4 for t in took), took
    finally:
        server.stop()


class Relay:
    """A TCP relay to a server whose connections can be cut, as a network drop or a proxy restart would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.port))
            self.sockets += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.sockets.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.cut()


def _wait_in_thread(client: Client, job_id: str, timeout: float | None) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            client.wait(job_id, timeout)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_client_wait__stream_dropped__resumes_and_sees_the_end(server: Server) -> None:
    relay = Relay(server.port)
    try:
        with Client(relay.url) as client:
            job_id = client.submit("add", 1, 2)["id"]  # no worker: it stays queued
            thread, errors = _wait_in_thread(client, job_id, 20)
            time.sleep(0.5)  # the stream is open
            relay.cut()
            server.http.post(f"/v1/jobs/{job_id}/cancel")
            thread.join(10)
            assert not thread.is_alive()
            assert isinstance(errors[0], JobFailed) and errors[0].status == "cancelled", errors
    finally:
        relay.close()


def test_client_wait__server_gone_for_good__gives_up(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (client_module.RECONNECTS, client_module.BACKOFF) == (5, 0.25)  # 7.75 s of waits, as documented
    monkeypatch.setattr(client_module, "BACKOFF", 0.02)  # the same doubling, 0.02 s to 0.32 s apart
    relay = Relay(server.port)
    with Client(relay.url) as client:
        job_id = client.submit("add", 1, 2)["id"]
        thread, errors = _wait_in_thread(client, job_id, None)
        time.sleep(0.5)
        gone = time.monotonic()
        relay.close()
        thread.join(15)  # 5 attempts, 0.02 s to 0.32 s apart
        assert not thread.is_alive()
        assert time.monotonic() - gone >= 0.02 * (1 + 2 + 4 + 8 + 16)  # it did back off, each time longer
        assert isinstance(errors[0], BackendUnavailable) and "lost the event stream" in str(errors[0])


def test_client_wait__closing_the_client__leaves_no_pending_task_behind(
    server: Server, worker: WorkerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream's line reader was left open when a job ended: closing the client then printed
    "Task was destroyed but it is pending!" at exit (4 runs in 10 of the README's snippet)."""
    for n in range(8):
        with Client(server.url) as client:
            assert client.wait(client.submit("add", n, 1)["id"], timeout=10) == n + 1
        gc.collect()
    assert "Task was destroyed" not in caplog.text


def test_client__dropped_without_close__its_thread_ends(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """A sync client made per request and never closed (``Client(url).submit(...)`` in a view)
    left a thread and a connection behind each time: 200 requests, 200 idle threads. One dropped
    in the middle of an event stream ends quietly too (the stream's close was destroyed pending)."""

    def client_threads() -> int:
        return sum(t.name == "conveyor-client" and t.is_alive() for t in threading.enumerate())

    def watch_a_little(n: int) -> None:
        client = Client(server.url)
        for _ in client.events(client.submit("add", n, 1)["id"], timeout=5):
            break  # the stream is left open, and the client dropped

    before = client_threads()
    for n in range(20):
        assert Client(server.url).submit("add", n, 1)["status"] == "queued"
        watch_a_little(n)
    gc.collect()
    deadline = time.monotonic() + 10
    while client_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client_threads() == before
    assert "Task was destroyed" not in caplog.text


def test_client__an_id_or_a_queue_name_that_cannot_be_one__refused_without_a_request(server: Server) -> None:
    """``get("../queues")`` returned the queue list as a job; a port out of range failed at the
    first call with a bare ExceptionGroup."""
    with Client(server.url) as client:
        for call in (lambda: client.get("../queues"), lambda: client.cancel("x/../../queues"),
                     lambda: client.retry("../jobs"), lambda: client.wait("../queues", timeout=1)):
            with pytest.raises(JobNotFound, match="no job has id"):
                call()
        with pytest.raises(ValidationError, match="queue names are"):
            client.queue("../jobs")
        with pytest.raises(ValidationError, match="queue names are"):
            client.purge("a/b")
        job = client.submit("add", 1, 2)
        assert client.get(job["id"].upper())["id"] == job["id"]  # a job id in capitals is still that job
    with pytest.raises(ConfigurationError, match="port 99999"):
        Client("http://127.0.0.1:99999")
