"""A client of Conveyor's HTTP API: ``Client`` (sync) and ``AsyncClient``, on httpx.

Jobs come back as the API's JSON (dicts). Problems come back as the core error tree:
422 → ``ValidationError`` (``UnknownTask``, ``IdempotencyKeyReused``) with ``errors``;
404 → ``JobNotFound``; 409 → ``InvalidTransition`` / ``IdempotencyKeyInFlight``;
503 or an unreachable server → ``BackendUnavailable``; anything else → ``ApiError``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from conveyor.core.errors import (
    BackendUnavailable,
    ConveyorError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    UnknownTask,
    ValidationError,
)

#: Keyword arguments of ``submit`` that are options, not the task's arguments (``key``: Idempotency-Key).
OPTIONS = frozenset({"queue", "priority", "delay", "eta", "max_retries", "timeout", "depends_on", "key",
                     "metadata", "webhook"})
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
Job = dict[str, Any]


class ApiError(ConveyorError):
    """The API answered with a problem the error tree has no class for."""

    def __init__(self, message: str, status: int, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = dict(problem or {})


#: Problem type (the last part of its URI) → error class.
ERRORS: Mapping[str, type[ConveyorError]] = {
    "unknown-task": UnknownTask,
    "idempotency-key-reused": IdempotencyKeyReused,
    "validation-error": ValidationError,
    "not-found": JobNotFound,
    "invalid-state-transition": InvalidTransition,
    "idempotency-key-in-use": IdempotencyKeyInFlight,
    "unavailable": BackendUnavailable,
}


def error_from(response: httpx.Response) -> ConveyorError:
    """The error of a 4xx/5xx response."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    detail = str(body.get("detail") or response.reason_phrase or response.status_code)
    kind = ERRORS.get(str(body.get("type", "")).rsplit("/", 1)[-1])
    if kind is None and response.status_code == 503:
        kind = BackendUnavailable
    if kind is not None and issubclass(kind, ValidationError):
        return kind(detail, list(body.get("errors") or []))
    if kind is not None:
        return kind(detail)
    return ApiError(f"HTTP {response.status_code}: {detail}", response.status_code, body)


def submission(task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of ``POST /v1/jobs`` for ``submit(task, *args, **kwargs)``."""
    body: dict[str, Any] = {"task": task, "args": list(args)}
    task_kwargs = {k: v for k, v in kwargs.items() if k not in OPTIONS}
    if task_kwargs:
        body["kwargs"] = task_kwargs
    headers = {}
    for name in OPTIONS & set(kwargs):
        value = kwargs[name]
        if name == "key":
            headers["Idempotency-Key"] = str(value)
        elif name == "eta" and isinstance(value, datetime):
            body["eta"] = value.isoformat()
        elif name == "depends_on":
            body["depends_on"] = [v["id"] if isinstance(v, Mapping) else str(v) for v in value]
        else:
            body[name] = value
    return body, headers


def outcome(job: Job) -> Any:
    """The result of a finished job, or ``JobFailed`` when it did not succeed."""
    if job["status"] == "succeeded":
        return job["result"]
    error = job.get("error") or None
    what = f": {error.get('type')}: {error.get('message')}" if error else ""
    # the words of ``JobHandle.wait``: the same failure reads the same with or without the API
    raise JobFailed(f"job {job['id']} ({job['task']}) {job['status']}{what}", error, job["status"])


class _SSE:
    """Parses an event stream line by line; yields the jobs of ``event: job``."""

    def __init__(self) -> None:
        self.data: list[str] = []
        self.event = ""
        self.last_id: str | None = None

    def feed(self, line: str) -> Job | None:
        if line == "":
            data, event, self.data, self.event = self.data, self.event, [], ""
            return json.loads("\n".join(data)) if data and event == "job" else None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.event = value
        elif field == "id":
            self.last_id = value
        return None


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class Client:
    """Synchronous client: ``Client("http://127.0.0.1:8000", token=...)``."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url, headers=_headers(token), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the Conveyor API: {exc}") from None
        if response.status_code >= 400:
            raise error_from(response)
        return response.json()

    def submit(self, task: str, *args: Any, **kwargs: Any) -> Job:
        """Submit one job: the task's arguments, plus options (``queue``, ``priority``, ``delay``, ``key``…)."""
        body, headers = submission(task, args, kwargs)
        job: Job = self._call("POST", "/v1/jobs", json=body, headers=headers)
        return job

    def submit_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        """Submit up to 1000 jobs (``{"task", "args", "kwargs", ...options}`` each), all or none."""
        reply = self._call("POST", "/v1/jobs/batch", json={"jobs": list(jobs)})
        return list(reply["jobs"])

    def get(self, job_id: str) -> Job:
        job: Job = self._call("GET", f"/v1/jobs/{job_id}")
        return job

    def list(self, *, status: str | None = None, task: str | None = None, queue: str | None = None,
             limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """One page: ``{"items": [...], "next_cursor": ...}``."""
        params = {k: v for k, v in {"status": status, "task": task, "queue": queue, "limit": limit,
                                    "cursor": cursor}.items() if v is not None}
        page: dict[str, Any] = self._call("GET", "/v1/jobs", params=params)
        return page

    def cancel(self, job_id: str) -> Job:
        job: Job = self._call("POST", f"/v1/jobs/{job_id}/cancel")
        return job

    def retry(self, job_id: str) -> Job:
        job: Job = self._call("POST", f"/v1/jobs/{job_id}/retry")
        return job

    def queues(self) -> dict[str, Any]:
        """Every queue: ``{"items": [{name, queued, scheduled, running, failed, ...settings}]}``."""
        page: dict[str, Any] = self._call("GET", "/v1/queues")
        return page

    def queue(self, name: str) -> dict[str, Any]:
        """One queue's counts and settings."""
        info: dict[str, Any] = self._call("GET", f"/v1/queues/{name}")
        return info

    def update_queue(self, name: str, **settings: Any) -> dict[str, Any]:
        """Change settings (``retention``, ``visibility_timeout``, ``max_deliveries``, ``result_ttl``, ``paused``)."""
        info: dict[str, Any] = self._call("PATCH", f"/v1/queues/{name}", json=settings)
        return info

    def redrive(self, name: str, ids: Sequence[str] | None = None) -> int:
        """Put the queue's dead letters (only ``ids`` if given) back to ``queued``; how many."""
        reply = self._call("POST", f"/v1/queues/{name}/redrive", json={"ids": list(ids)} if ids is not None else {})
        return int(reply["redriven"])

    def purge(self, name: str) -> int:
        """Cancel every job of the queue that has not started; how many."""
        return int(self._call("POST", f"/v1/queues/{name}/purge")["purged"])

    def events(self, job_id: str, timeout: float | None = None) -> Iterator[Job]:
        """The job's states as they change, ending with its terminal one (reconnects as needed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: str | None = None
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            read = 60.0 if deadline is None else max(0.05, deadline - time.monotonic())
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                      timeout=httpx.Timeout(10.0, read=read)) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        response.read()
                        raise error_from(response)
                    parser = _SSE()
                    for line in response.iter_lines():
                        job = parser.feed(line)
                        last = parser.last_id or last
                        if job is not None:
                            yield job
                            if job["status"] in TERMINAL:
                                return
                        if deadline is not None and time.monotonic() > deadline:
                            raise TimeoutError(f"job {job_id} not finished within {timeout} s")
            except httpx.ReadTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id} not finished within {timeout} s") from None
            except httpx.TransportError as exc:
                raise BackendUnavailable(f"cannot reach the Conveyor API: {exc}") from None

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result once it finished; ``JobFailed`` if it did not succeed, ``TimeoutError``."""
        final: Job | None = None
        for job in self.events(job_id, timeout):
            final = job
        return outcome(final if final is not None else self.get(job_id))


class AsyncClient:
    """Asynchronous client, with the methods of ``Client`` as coroutines (``events`` is async-iterable)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers=_headers(token), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the Conveyor API: {exc}") from None
        if response.status_code >= 400:
            raise error_from(response)
        return response.json()

    async def submit(self, task: str, *args: Any, **kwargs: Any) -> Job:
        body, headers = submission(task, args, kwargs)
        job: Job = await self._call("POST", "/v1/jobs", json=body, headers=headers)
        return job

    async def submit_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        reply = await self._call("POST", "/v1/jobs/batch", json={"jobs": list(jobs)})
        return list(reply["jobs"])

    async def get(self, job_id: str) -> Job:
        job: Job = await self._call("GET", f"/v1/jobs/{job_id}")
        return job

    async def list(self, *, status: str | None = None, task: str | None = None, queue: str | None = None,
                   limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "task": task, "queue": queue, "limit": limit,
                                    "cursor": cursor}.items() if v is not None}
        page: dict[str, Any] = await self._call("GET", "/v1/jobs", params=params)
        return page

    async def cancel(self, job_id: str) -> Job:
        job: Job = await self._call("POST", f"/v1/jobs/{job_id}/cancel")
        return job

    async def retry(self, job_id: str) -> Job:
        job: Job = await self._call("POST", f"/v1/jobs/{job_id}/retry")
        return job

    async def queues(self) -> dict[str, Any]:
        page: dict[str, Any] = await self._call("GET", "/v1/queues")
        return page

    async def queue(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = await self._call("GET", f"/v1/queues/{name}")
        return info

    async def update_queue(self, name: str, **settings: Any) -> dict[str, Any]:
        info: dict[str, Any] = await self._call("PATCH", f"/v1/queues/{name}", json=settings)
        return info

    async def redrive(self, name: str, ids: Sequence[str] | None = None) -> int:
        body = {"ids": list(ids)} if ids is not None else {}
        reply = await self._call("POST", f"/v1/queues/{name}/redrive", json=body)
        return int(reply["redriven"])

    async def purge(self, name: str) -> int:
        return int((await self._call("POST", f"/v1/queues/{name}/purge"))["purged"])

    async def events(self, job_id: str, timeout: float | None = None) -> AsyncIterator[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        last: str | None = None
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            read = 60.0 if deadline is None else max(0.05, deadline - time.monotonic())
            try:
                async with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                            timeout=httpx.Timeout(10.0, read=read)) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from(response)
                    parser = _SSE()
                    async for line in response.aiter_lines():
                        job = parser.feed(line)
                        last = parser.last_id or last
                        if job is not None:
                            yield job
                            if job["status"] in TERMINAL:
                                return
            except httpx.ReadTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id} not finished within {timeout} s") from None
            except httpx.TransportError as exc:
                raise BackendUnavailable(f"cannot reach the Conveyor API: {exc}") from None

    async def wait(self, job_id: str, timeout: float | None = None) -> Any:
        final: Job | None = None
        async for job in self.events(job_id, timeout):
            final = job
        return outcome(final if final is not None else await self.get(job_id))


__all__ = ["ApiError", "AsyncClient", "Client"]
