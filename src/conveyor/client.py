"""A client of Conveyor's HTTP API: ``Client`` (sync) and ``AsyncClient``, on httpx.

Jobs come back as the API's JSON (dicts). Problems come back as the core error tree:
422 → ``ValidationError`` (``UnknownTask``, ``IdempotencyKeyReused``) with ``errors``;
404 → ``JobNotFound`` (``QueueNotFound`` from the queue routes); 409 → ``InvalidTransition`` /
``IdempotencyKeyInFlight``; 503 or an unreachable server → ``BackendUnavailable``; anything else
→ ``ApiError``. What cannot be sent at all fails before sending: ``ValidationError`` (a bad
``key``, NaN), ``ConfigurationError`` (a base URL that is not http(s)).

``AsyncClient`` is the one implementation; ``Client`` runs its coroutines for sync callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import httpx

from conveyor.core.errors import (
    BackendUnavailable,
    ConfigurationError,
    ConveyorError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    QueueNotFound,
    UnknownTask,
    ValidationError,
)
from conveyor.core.idempotency import header_value, is_valid_key
from conveyor.core.ids import job_id_of
from conveyor.core.queues import QUEUE_NAME_RULE, is_queue_name
from conveyor.serialization import not_json

#: Keyword arguments of ``submit`` that are options, not the task's arguments (``key``: Idempotency-Key).
OPTIONS = frozenset({"queue", "priority", "delay", "eta", "max_retries", "timeout", "depends_on", "key",
                     "metadata", "webhook"})
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
Job = dict[str, Any]
T = TypeVar("T")


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


def error_from(response: httpx.Response, missing: type[JobNotFound] = JobNotFound) -> ConveyorError:
    """The error of a 4xx/5xx response; a 404 is ``missing`` (what the route looks up: a job, a queue)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    detail = str(body.get("detail") or response.reason_phrase or response.status_code)
    kind = ERRORS.get(str(body.get("type", "")).rsplit("/", 1)[-1])
    if kind is JobNotFound:
        kind = missing
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
            headers["Idempotency-Key"] = _key(value)
        elif name == "eta":
            body["eta"] = _rfc3339(value)
        elif name == "depends_on":
            body["depends_on"] = [v["id"] if isinstance(v, Mapping) else str(v) for v in value]
        else:
            body[name] = value
    return body, headers


def _rfc3339(eta: Any) -> Any:
    """``eta`` as the API takes it, read as ``enqueue`` reads it: a naive datetime is local
    time, a number is seconds since the epoch (anything else goes as it is, for the server to judge)."""
    if isinstance(eta, datetime):
        return (eta if eta.tzinfo is not None else eta.astimezone()).isoformat()
    if isinstance(eta, int | float) and not isinstance(eta, bool) and math.isfinite(eta):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            return datetime.fromtimestamp(eta, UTC).isoformat()
    return eta


def _key(value: Any) -> str:
    """An Idempotency-Key: 1–255 printable ASCII characters, as the server requires (a header
    carries nothing else; httpx would fail with a bare ``UnicodeEncodeError``)."""
    key = str(value)
    if not is_valid_key(key):
        detail = f"key must be 1–255 printable ASCII characters, not {key!r}"
        raise ValidationError(detail, [{"parameter": "Idempotency-Key", "detail": detail}])
    # bare, as Stripe's clients send it, unless the server would read it as a quoted string
    return header_value(key) if key.startswith('"') else key


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


def _base_url(base_url: str) -> str:
    """``base_url`` if it is an http(s) URL with a host; else ``ConfigurationError`` now, not
    a misleading "cannot reach" at the first call."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"the API URL {base_url!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(f"the API URL {base_url!r} must be http:// or https:// with a host")
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigurationError(f"the API URL {base_url!r}: port {url.port} is not 1–65535")
    if b"?" in url.raw_path:  # each path would go after it: "?x=1/v1/jobs" asked the server's / instead
        raise ConfigurationError(f"the API URL {base_url!r} has a query (?...): give the server's base URL, "
                                 "e.g. http://127.0.0.1:8000")
    return base_url


def _job_path(job_id: str) -> str:
    """The path of job ``job_id``; ``JobNotFound`` without a request for text that is not a job id
    (sent as it was, ``get("../queues")`` returned the queue list as a job)."""
    stored = job_id_of(job_id)
    if stored is None:
        raise JobNotFound(f"no job has id {job_id!r}")
    return f"/v1/jobs/{stored}"


def _queue_path(name: str) -> str:
    """The path of queue ``name``; ``ValidationError`` without a request for a name no queue can have."""
    if not is_queue_name(name):
        raise ValidationError(f"{QUEUE_NAME_RULE}, not {name!r}", [{"parameter": "name", "detail": QUEUE_NAME_RULE}])
    return f"/v1/queues/{name}"


def _encode(body: Any) -> bytes:
    """The JSON of a request body; ``ValidationError`` naming what JSON cannot carry (NaN, a set…)."""
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, TypeError) as exc:
        pointer, why = not_json(body) or ("#", str(exc))
        raise ValidationError(f"{pointer}: {why}", [{"pointer": pointer, "detail": why}]) from None


#: Seconds an event stream may stay silent before it counts as lost (the server sends a
#: keep-alive comment every 15 s, so this is three missed ones).
IDLE = 45.0
#: Failed connections in a row after which ``events`` gives up; the n-th waits ``BACKOFF * 2**(n-1)`` s.
RECONNECTS = 5
BACKOFF = 0.25


class _Deadline:
    """What is left of a ``timeout``: every wait of ``events`` is bounded by it."""

    def __init__(self, job_id: str, timeout: float | None) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.at = None if timeout is None else time.monotonic() + timeout

    def left(self, cap: float) -> float:
        """``cap``, or less when the deadline is nearer; ``TimeoutError`` once it passed."""
        if self.at is None:
            return cap
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {self.job_id} not finished within {self.timeout:g} s")
        return min(cap, left)

    async def bound(self, awaitable: Awaitable[T], cap: float) -> T:
        """``awaitable``'s result within ``left(cap)`` s: past the deadline ``TimeoutError``, past
        ``cap`` ``httpx.ReadTimeout`` (a silent stream is a lost one). httpx fixes a stream's read
        timeout when it opens, so each keep-alive would restart it: the deadline is kept here."""
        try:
            return await asyncio.wait_for(awaitable, self.left(cap))
        except TimeoutError:
            self.left(cap)
            raise httpx.ReadTimeout(f"no data for {cap:g} s") from None


class AsyncClient:
    """Asynchronous client: ``AsyncClient("http://127.0.0.1:8000", token=...)``."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.http = httpx.AsyncClient(base_url=_base_url(base_url), headers=_headers(token), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, body: Any = None, *, missing: type[JobNotFound] = JobNotFound,
                    **kwargs: Any) -> Any:
        if body is not None:
            kwargs["content"] = _encode(body)
            kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the Conveyor API: {exc}") from None
        if response.status_code >= 400:
            raise error_from(response, missing)
        return response.json()

    async def submit(self, task: str, *args: Any, **kwargs: Any) -> Job:
        """Submit one job: the task's arguments, plus options (``queue``, ``priority``, ``delay``, ``key``…)."""
        body, headers = submission(task, args, kwargs)
        job: Job = await self._call("POST", "/v1/jobs", body, headers=headers)
        return job

    async def submit_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        """Submit up to 1000 jobs (``{"task", "args", "kwargs", ...options}`` each), all or none."""
        reply = await self._call("POST", "/v1/jobs/batch", {"jobs": list(jobs)})
        return list(reply["jobs"])

    async def get(self, job_id: str) -> Job:
        """The job as the API returns it."""
        job: Job = await self._call("GET", _job_path(job_id))
        return job

    async def list(self, *, status: str | None = None, task: str | None = None, queue: str | None = None,
                   limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """One page: ``{"items": [...], "next_cursor": ...}``."""
        params = {k: v for k, v in {"status": status, "task": task, "queue": queue, "limit": limit,
                                    "cursor": cursor}.items() if v is not None}
        page: dict[str, Any] = await self._call("GET", "/v1/jobs", params=params)
        return page

    async def cancel(self, job_id: str) -> Job:
        """Cancel the job: a pending one at once, a running one cooperatively."""
        job: Job = await self._call("POST", f"{_job_path(job_id)}/cancel")
        return job

    async def retry(self, job_id: str) -> Job:
        """Run a finished job again."""
        job: Job = await self._call("POST", f"{_job_path(job_id)}/retry")
        return job

    async def queues(self) -> dict[str, Any]:
        """Every queue: ``{"items": [{name, queued, scheduled, running, failed, ...settings}]}``."""
        page: dict[str, Any] = await self._call("GET", "/v1/queues")
        return page

    async def queue(self, name: str) -> dict[str, Any]:
        """One queue's counts and settings; ``QueueNotFound`` for a name the server does not know."""
        info: dict[str, Any] = await self._call("GET", _queue_path(name), missing=QueueNotFound)
        return info

    async def update_queue(self, name: str, **settings: Any) -> dict[str, Any]:
        """Change settings (``retention``, ``visibility_timeout``, ``max_deliveries``, ``result_ttl``, ``paused``)."""
        info: dict[str, Any] = await self._call("PATCH", _queue_path(name), settings, missing=QueueNotFound)
        return info

    async def redrive(self, name: str, ids: Sequence[str] | None = None) -> int:
        """Put the queue's dead letters (only ``ids`` if given) back to ``queued``; how many."""
        body = {"ids": list(ids)} if ids is not None else {}
        reply = await self._call("POST", f"{_queue_path(name)}/redrive", body, missing=QueueNotFound)
        return int(reply["redriven"])

    async def purge(self, name: str) -> int:
        """Cancel every job of the queue that has not started; how many."""
        return int((await self._call("POST", f"{_queue_path(name)}/purge", missing=QueueNotFound))["purged"])

    async def tasks(self) -> dict[str, Any]:
        """The app's tasks: ``{"items": [{name, queue, priority, max_retries, timeout, parameters}]}``
        (``parameters``: a JSON Schema)."""
        page: dict[str, Any] = await self._call("GET", "/v1/tasks")
        return page

    async def workers(self) -> dict[str, Any]:
        """Live workers: ``{"items": [{id, host, pid, queues, concurrency, running, started_at,
        last_heartbeat}]}`` (``running``: the ids of the jobs it runs)."""
        page: dict[str, Any] = await self._call("GET", "/v1/workers")
        return page

    async def schedules(self) -> dict[str, Any]:
        """The app's periodic tasks: ``{"items": [{task, cron, tz, kwargs, catch_up, previous_run_at,
        next_run_at}]}``."""
        page: dict[str, Any] = await self._call("GET", "/v1/schedules")
        return page

    async def events(self, job_id: str, timeout: float | None = None) -> AsyncGenerator[Job, None]:
        """The job's states as they change, ending with its terminal one. A lost stream is resumed
        where it stopped (``Last-Event-ID``) after a short backoff; ``RECONNECTS`` failures in a row
        raise ``BackendUnavailable``; ``TimeoutError`` once ``timeout`` seconds have passed."""
        clock = _Deadline(job_id, timeout)
        parser = _SSE()
        failures = 0
        while True:
            headers = {"Last-Event-ID": parser.last_id} if parser.last_id else {}
            request = self.http.build_request("GET", f"{_job_path(job_id)}/events", headers=headers,
                                              timeout=httpx.Timeout(10.0, read=None))  # reads: see bound()
            try:
                response = await clock.bound(self.http.send(request, stream=True), IDLE)
                try:
                    if response.status_code == 204:  # the last event we saw was the terminal one
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from(response)
                    kind = response.headers.get("content-type", "").partition(";")[0].strip()
                    if kind != "text/event-stream":  # another server (a page, a proxy's): no use asking again
                        raise ApiError(f"HTTP {response.status_code}: {kind or 'no content type'}, not an event "
                                       "stream", response.status_code)
                    # closed here, not by the loop's finalizer later (a closed loop never runs it)
                    async with contextlib.aclosing(cast(AsyncGenerator[str, None], response.aiter_lines())) as lines:
                        while (line := await clock.bound(anext(lines, None), IDLE)) is not None:
                            job = parser.feed(line)
                            if job is not None or line.startswith(":"):
                                failures = 0  # the server is there: only failures in a row count
                            if job is not None:
                                yield job
                                if job["status"] in TERMINAL:
                                    return
                finally:
                    await response.aclose()
                lost: Exception = httpx.RemoteProtocolError("the stream ended before the job did")
            except httpx.TransportError as exc:
                lost = exc
            failures += 1
            if failures > RECONNECTS:
                raise BackendUnavailable(f"lost the event stream of job {job_id} {failures} times in a row: "
                                         f"{lost}") from lost
            await asyncio.sleep(clock.left(BACKOFF * 2 ** (failures - 1)))

    async def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result once it finished; ``JobFailed`` if it did not succeed, ``TimeoutError``."""
        final: Job | None = None
        async for job in self.events(job_id, timeout):
            final = job
        return outcome(final if final is not None else await self.get(job_id))


class Client:
    """Synchronous client: ``Client("http://127.0.0.1:8000", token=...)``, the methods of
    ``AsyncClient`` run on an event loop of its own in a daemon thread.

    One loop per client, not ``core.portal``'s loop per calling thread: httpx's connections belong
    to the loop that opened them, and a client may be shared by threads.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self._async = AsyncClient(base_url, token, timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=_serve, args=(self._loop,), name="conveyor-client", daemon=True)
        self._thread.start()
        # a client dropped without close() (one per request in a web view): its thread and
        # connections end with it, rather than one more idle thread per request, forever
        self._dropped = weakref.finalize(self, _close_dropped, self._loop, self._async)
        self._dropped.atexit = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._dropped.detach()
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        self._run(self._loop.shutdown_asyncgens())  # a stream a caller left unfinished
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C in the caller: stop the request too
            raise

    def submit(self, task: str, *args: Any, **kwargs: Any) -> Job:
        """Submit one job: the task's arguments, plus options (``queue``, ``priority``, ``delay``, ``key``…)."""
        return self._run(self._async.submit(task, *args, **kwargs))

    def submit_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        """Submit up to 1000 jobs (``{"task", "args", "kwargs", ...options}`` each), all or none."""
        return self._run(self._async.submit_many(jobs))

    def get(self, job_id: str) -> Job:
        """The job as the API returns it."""
        return self._run(self._async.get(job_id))

    def list(self, *, status: str | None = None, task: str | None = None, queue: str | None = None,
             limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """One page: ``{"items": [...], "next_cursor": ...}``."""
        return self._run(self._async.list(status=status, task=task, queue=queue, limit=limit, cursor=cursor))

    def cancel(self, job_id: str) -> Job:
        """Cancel the job: a pending one at once, a running one cooperatively."""
        return self._run(self._async.cancel(job_id))

    def retry(self, job_id: str) -> Job:
        """Run a finished job again."""
        return self._run(self._async.retry(job_id))

    def queues(self) -> dict[str, Any]:
        """Every queue: ``{"items": [{name, queued, scheduled, running, failed, ...settings}]}``."""
        return self._run(self._async.queues())

    def queue(self, name: str) -> dict[str, Any]:
        """One queue's counts and settings; ``QueueNotFound`` for a name the server does not know."""
        return self._run(self._async.queue(name))

    def update_queue(self, name: str, **settings: Any) -> dict[str, Any]:
        """Change settings (``retention``, ``visibility_timeout``, ``max_deliveries``, ``result_ttl``, ``paused``)."""
        return self._run(self._async.update_queue(name, **settings))

    def redrive(self, name: str, ids: Sequence[str] | None = None) -> int:
        """Put the queue's dead letters (only ``ids`` if given) back to ``queued``; how many."""
        return self._run(self._async.redrive(name, ids))

    def purge(self, name: str) -> int:
        """Cancel every job of the queue that has not started; how many."""
        return self._run(self._async.purge(name))

    def tasks(self) -> dict[str, Any]:
        """The app's tasks: ``{"items": [{name, queue, priority, max_retries, timeout, parameters}]}``
        (``parameters``: a JSON Schema)."""
        return self._run(self._async.tasks())

    def workers(self) -> dict[str, Any]:
        """Live workers: ``{"items": [{id, host, pid, queues, concurrency, running, started_at,
        last_heartbeat}]}`` (``running``: the ids of the jobs it runs)."""
        return self._run(self._async.workers())

    def schedules(self) -> dict[str, Any]:
        """The app's periodic tasks: ``{"items": [{task, cron, tz, kwargs, catch_up, previous_run_at,
        next_run_at}]}``."""
        return self._run(self._async.schedules())

    def events(self, job_id: str, timeout: float | None = None) -> Iterator[Job]:
        """The job's states as they change, ending with its terminal one (see ``AsyncClient.events``)."""
        stream = self._async.events(job_id, timeout)
        try:
            while (job := self._run(_next(stream))) is not None:
                yield job
        finally:
            self._run(stream.aclose())

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result once it finished; ``JobFailed`` if it did not succeed, ``TimeoutError``."""
        return self._run(self._async.wait(job_id, timeout))


async def _next(stream: AsyncIterator[Job]) -> Job | None:
    return await anext(stream, None)


__all__ = ["ApiError", "AsyncClient", "Client"]


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """A ``Client``'s thread: its loop, closed once stopped, after the tasks left on it end (as
    ``asyncio.run`` does: a stream's close scheduled by the collector was destroyed pending)."""
    try:
        loop.run_forever()
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    finally:
        loop.close()


def _close_dropped(loop: asyncio.AbstractEventLoop, client: AsyncClient) -> None:
    """A ``Client`` was collected unclosed: close its connections and stop its thread, without
    waiting (the collector may run in any thread, that one included)."""

    async def close() -> None:
        try:
            await client.aclose()
            await loop.shutdown_asyncgens()
        finally:
            loop.stop()

    def start() -> None:
        task = loop.create_task(close())
        _CLOSING.add(task)  # the loop holds its tasks weakly
        task.add_done_callback(_CLOSING.discard)

    with contextlib.suppress(RuntimeError):  # its loop is closed already
        loop.call_soon_threadsafe(start)


_CLOSING: set[asyncio.Task[None]] = set()
