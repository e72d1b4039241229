"""conveyor.client against a real server: submit, read, list, wait, events, errors mapped back."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.client import AsyncClient, Client
from conveyor.core.errors import (
    BackendUnavailable,
    IdempotencyKeyReused,
    InvalidArguments,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    UnknownTask,
    ValidationError,
)
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
        with pytest.raises(InvalidTransition):
            client.retry(job["id"])
        assert client.cancel(job["id"])["status"] == "cancelled"
        assert client.retry(job["id"])["status"] == "queued"
    with Client(f"http://127.0.0.1:{free_port()}") as dead, pytest.raises(BackendUnavailable):
        dead.get("x")
    assert not issubclass(InvalidArguments, UnknownTask)


def test_async_client(server: Server, worker: WorkerThread) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as client:
            job = await client.submit("add", 20, 22)
            assert await client.wait(job["id"], timeout=10) == 42
            assert (await client.get(job["id"]))["result"] == 42
            with pytest.raises(UnknownTask):
                await client.submit("nope")

    asyncio.run(main())
