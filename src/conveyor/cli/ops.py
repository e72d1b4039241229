"""The one seam between the commands and where jobs live: the backend itself, or the HTTP API.

The job and queue commands (``submit``, ``status``, ``watch``, ``jobs``, ``cancel``, ``retry``,
``queues``, ``queue``, ``redrive``, ``purge``) talk to an ``Operations``, opened once per command by
``open_operations(args)``: ``Direct`` opens the backend of ``--url`` (and loads ``--app`` when it
needs it); ``Remote`` goes through ``conveyor.client.AsyncClient`` to the API of ``--api``. Both
speak the HTTP API's JSON (SPEC §3, §6), so ``--json`` prints the same thing either way and, through
``--api``, exactly what the server returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.backends.base import Backend, JobQuery, QueueInfo
from conveyor.cli.common import api_settings, app_spec, backend_url, load, open_backend
from conveyor.cli.errors import UsageError
from conveyor.core.app import Conveyor
from conveyor.core.errors import (
    BackendUnavailable,
    ConveyorError,
    InvalidTransition,
    JobNotFound,
    ValidationError,
)
from conveyor.core.idempotency import check_replay
from conveyor.core.ids import job_id_of
from conveyor.core.job import Job, Status
from conveyor.scheduler import describe

if TYPE_CHECKING:
    from conveyor.client import ApiError, AsyncClient

#: A job, a page of jobs, or a queue, as the HTTP API's JSON.
JsonObject = dict[str, Any]
#: Statuses ``retry`` accepts.
RETRYABLE = (Status.FAILED, Status.CANCELLED, Status.EXPIRED)


class ApiAuthError(ConveyorError):
    """The API refused the request's token (401) or its scope (403)."""


class Operations(Protocol):
    """What the job and queue commands need; every job and queue is the API's JSON."""

    async def submit(self, task: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                     options: Mapping[str, Any]) -> str:
        """Enqueue one job (``options``: queue, priority, delay, max_retries, key); its id."""
        ...

    async def wait(self, job_id: str, timeout: float | None) -> Any:
        """The job's result once it finished; ``JobFailed`` unless it succeeded; ``TimeoutError``."""
        ...

    async def get(self, job_id: str) -> JsonObject:
        """One job, or ``JobNotFound``."""
        ...

    def follow(self, job_id: str, timeout: float | None) -> AsyncIterator[JsonObject]:
        """The job on every change, ending with its terminal state; ``TimeoutError`` after ``timeout``."""
        ...

    async def jobs(self, *, status: str | None, task: str | None, queue: str | None, limit: int,
                   cursor: str | None) -> JsonObject:
        """One page, newest first: ``{"items": [...], "next_cursor": ...}``."""
        ...

    async def cancel(self, job_id: str) -> JsonObject:
        ...

    async def retry(self, job_id: str) -> JsonObject:
        ...

    async def queues(self) -> JsonObject:
        """``{"items": [queue, ...]}``."""
        ...

    async def queue(self, name: str, changes: Mapping[str, Any]) -> JsonObject:
        """One queue, after applying ``changes`` to its settings when there are any."""
        ...

    async def redrive(self, name: str, ids: Sequence[str] | None) -> int:
        ...

    async def purge(self, name: str) -> int:
        ...

    async def schedules(self) -> JsonObject:
        """``{"items": [schedule, ...]}``: the app's periodic tasks, each with its next run."""
        ...


@contextlib.asynccontextmanager
async def open_operations(args: Any) -> AsyncIterator[Operations]:
    """``Remote`` when ``--api`` / ``CONVEYOR_API`` is set, else ``Direct``; closed at the end."""
    api, token = api_settings(args)
    if api is not None:
        from conveyor.client import AsyncClient  # here: the HTTP client is loaded for --api alone

        async with AsyncClient(api, token=token) as client:
            yield Remote(client, api, token)
        return
    direct = Direct(args)
    try:
        yield direct
    finally:
        await direct.close()


# -- the backend itself ---------------------------------------------------------------------
class Direct:
    """Opens the backend (lazily: a typo in ``submit`` needs no database) and works on it."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self._app: Conveyor | None = None
        self._backend: Backend | None = None
        self._stack = contextlib.AsyncExitStack()

    def app(self) -> Conveyor:
        if self._app is None:
            self._app = load(self.args)
        return self._app

    async def backend(self) -> Backend:
        if self._backend is None:
            url = self._app.url if self._app is not None else backend_url(self.args)
            self._backend = await self._stack.enter_async_context(open_backend(url))
        return self._backend

    async def close(self) -> None:
        await self._stack.aclose()

    async def submit(self, task: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                     options: Mapping[str, Any]) -> str:
        job = self.app().build_job(task, args, kwargs, now=time.time(), **options)  # validated before the backend
        [(stored, created)] = await (await self.backend()).enqueue([job])
        if not created:
            check_replay(job, stored)  # --key reused for other arguments: refused, as over HTTP
        return stored.id

    async def wait(self, job_id: str, timeout: float | None) -> Any:
        app = self.app()
        app.bind(await self.backend())
        handle = await app.get_job_async(job_id)
        if handle is None:
            raise JobNotFound(f"no job has id {job_id!r}")
        return await handle.wait_async(timeout)

    async def _job(self, job_id: str) -> Job:
        stored_id = job_id_of(job_id)
        found = await (await self.backend()).get_jobs([stored_id]) if stored_id else []
        if not found:
            raise JobNotFound(f"no job has id {job_id!r}")
        return found[0]

    async def get(self, job_id: str) -> JsonObject:
        return (await self._job(job_id)).to_json()

    async def follow(self, job_id: str, timeout: float | None) -> AsyncIterator[JsonObject]:
        backend = await self.backend()
        deadline = None if timeout is None else time.monotonic() + timeout
        revision = -1
        pause = 0.02
        job = await self._job(job_id)
        while True:
            current = (await backend.revisions([job.id])).get(job.id)
            if current is None:
                raise JobNotFound(f"job {job_id} no longer exists")
            if current != revision:
                revision, pause = current, 0.02
                job = await self._job(job_id)
                yield job.to_json()
                if job.status.terminal:
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout:g} s")
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)

    async def jobs(self, *, status: str | None, task: str | None, queue: str | None, limit: int,
                   cursor: str | None) -> JsonObject:
        query = JobQuery(status=Status(status) if status else None, task=task, queue=queue, limit=limit,
                         cursor=cursor)
        page = await (await self.backend()).list_jobs(query)
        return {"items": [j.to_json() for j in page.items], "next_cursor": page.next_cursor}

    async def cancel(self, job_id: str) -> JsonObject:
        stored_id = job_id_of(job_id)
        job = await (await self.backend()).cancel(stored_id, time.time()) if stored_id else None
        if job is None:
            raise JobNotFound(f"no job has id {job_id!r}")
        return job.to_json()

    async def retry(self, job_id: str) -> JsonObject:
        backend = await self.backend()
        job = await self._job(job_id)
        requeued = await backend.requeue(None, [job.id], RETRYABLE, time.time()) if job.status in RETRYABLE else []
        if not requeued:
            job = await self._job(job_id)  # it may have changed meanwhile: name the status now
            raise InvalidTransition(
                f"job {job.id} is {job.status}; only failed, cancelled or expired jobs can be retried"
            )
        return requeued[0].to_json()

    async def queues(self) -> JsonObject:
        return {"items": [i.to_json() for i in await (await self.backend()).queues_and(self._named())]}

    async def schedules(self) -> JsonObject:
        now = time.time()
        return {"items": [describe(s, now) for s in self.app().schedules]}

    def _named(self) -> list[str]:
        """The queues the app names, with ``--app`` (without it, only the backend's)."""
        return self.app().queue_names() if app_spec(self.args) else []

    async def _known(self, name: str) -> QueueInfo:
        """The queue ``name``, or ``QueueNotFound`` (the API's 404) when no one knows it."""
        return await (await self.backend()).known_queue(name, self._named())

    async def queue(self, name: str, changes: Mapping[str, Any]) -> JsonObject:
        known = await self._known(name)  # a typo must not make a new (paused) queue: as the API
        if not changes:
            return known.to_json()
        backend = await self.backend()
        current = await backend.queue_settings(name)
        await backend.save_queue_settings(name, current.replace(**changes), fields=changes)
        return (await backend.queues([name]))[0].to_json()

    async def redrive(self, name: str, ids: Sequence[str] | None) -> int:
        if ids is not None:
            ids = [_stored_id(text) for text in ids]
        await self._known(name)
        return len(await (await self.backend()).requeue(name, ids, [Status.FAILED], time.time()))

    async def purge(self, name: str) -> int:
        await self._known(name)
        return await (await self.backend()).purge(name, time.time())


# -- the HTTP API ---------------------------------------------------------------------------
def _job_id(text: str) -> str:
    """``text`` when it is a job id, to go into a URL path; else ``JobNotFound``, as ``Direct`` says
    it. Sent as it was, "../queues" read the queue list as a job ("unexpected KeyError")."""
    if job_id_of(text) is None:
        raise JobNotFound(f"no job has id {text!r}")
    return text


class Remote:
    """Works through ``conveyor.client.AsyncClient``; the server validates and answers in JSON."""

    def __init__(self, client: AsyncClient, api: str, token: str | None) -> None:
        self.client = client
        self.api = api
        self.token = token

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The client's errors as one clear line each (the exit code follows from the class)."""
        import httpx

        from conveyor.client import ApiError

        try:
            yield
        except JobNotFound as exc:  # QueueNotFound too
            if str(exc) == "Not Found":  # no route there (Starlette's 404), not "no job has id ..."
                raise self._not_an_api("has no Conveyor API routes (HTTP 404 for /v1/...)") from None
            raise
        except ValidationError as exc:  # 422: unknown task, bad arguments, bad settings
            if exc.errors:  # name each part of the request that is wrong: "#/args/1: b: ..."
                details = "; ".join(f"{e.get('pointer') or e.get('parameter') or '#'}: {e.get('detail')}"
                                    for e in exc.errors)
                raise type(exc)(details, exc.errors) from None
            raise
        except BackendUnavailable as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, httpx.TransportError):
                raise BackendUnavailable(f"cannot reach the API at {self.api}: {_reason(cause)}") from None
            raise
        except ApiError as exc:
            raise self._api_error(exc) from None
        except (ValueError, KeyError, TypeError):  # a 2xx that is not Conveyor's JSON: a wrong --api (exit 2)
            raise self._not_an_api("did not answer like a Conveyor API") from None

    def _api_error(self, exc: ApiError) -> ConveyorError:
        """A problem the error tree has no class for, as the line and exit code the user needs."""
        detail = exc.problem.get("detail") or str(exc)
        if exc.status == 401 and self.token is None:
            return ApiAuthError(f"the API at {self.api} needs a token: pass --token or set CONVEYOR_API_TOKEN "
                                "(HTTP 401)")
        if exc.status == 401:
            return ApiAuthError(f"the API at {self.api} did not accept the token of --token / "
                                "CONVEYOR_API_TOKEN (HTTP 401)")
        if exc.status == 403:
            return ApiAuthError(f"the token is not allowed to do this: {detail} (HTTP 403)")
        if exc.status in (404, 405, 501) and not exc.problem.get("type"):  # not even a problem+json: another
            # server, or another path (a web server that serves files answers a POST 501 or 405)
            return self._not_an_api(f"has no Conveyor API routes (HTTP {exc.status} for /v1/...)")
        if exc.status < 300:  # a 2xx where an event stream was due
            return self._not_an_api(f"did not answer like a Conveyor API ({exc})")
        if exc.status in (400, 413):  # what the command sent, made of its arguments: a bad argument
            return UsageError(f"the API refused the request: {detail} (HTTP {exc.status})")
        return exc

    def _not_an_api(self, why: str) -> UsageError:
        """``--api`` names no Conveyor API (``why``): a usage error, as the help says."""
        return UsageError(f"{self.api} {why}: give the server's base URL, e.g. http://127.0.0.1:8000")

    async def submit(self, task: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                     options: Mapping[str, Any]) -> str:
        with self._errors():
            job = await self.client.submit(task, *args, **kwargs, **options)
            return str(job["id"])

    async def wait(self, job_id: str, timeout: float | None) -> Any:
        final: JsonObject | None = None
        async for job in self.follow(job_id, timeout):
            final = job
        if final is None:
            final = await self.get(job_id)
        from conveyor.client import outcome

        return outcome(final)

    async def get(self, job_id: str) -> JsonObject:
        with self._errors():
            return await self.client.get(_job_id(job_id))

    async def follow(self, job_id: str, timeout: float | None) -> AsyncIterator[JsonObject]:
        """The job's server-sent events, each wait bounded by what is left of ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: JsonObject | None = None
        with self._errors():
            events = self.client.events(_job_id(job_id))
            try:
                while True:
                    left = None if deadline is None else deadline - time.monotonic()
                    try:
                        if left is not None and left <= 0:
                            raise TimeoutError
                        job = await asyncio.wait_for(anext(events), left)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        status = last["status"] if last else "unfinished"
                        raise TimeoutError(f"job {job_id} still {status} after {timeout:g} s") from None
                    last = job
                    yield job
            finally:
                await aclose(events)
            if last is None or last["status"] not in {str(s) for s in Status if s.terminal}:
                yield await self.client.get(job_id)  # the stream ended early (e.g. 204): read it once

    async def jobs(self, *, status: str | None, task: str | None, queue: str | None, limit: int,
                   cursor: str | None) -> JsonObject:
        with self._errors():
            return await self.client.list(status=status, task=task, queue=queue, limit=limit, cursor=cursor)

    async def cancel(self, job_id: str) -> JsonObject:
        with self._errors():
            return await self.client.cancel(_job_id(job_id))

    async def retry(self, job_id: str) -> JsonObject:
        with self._errors():
            return await self.client.retry(_job_id(job_id))

    async def queues(self) -> JsonObject:
        with self._errors():
            return await self.client.queues()

    async def schedules(self) -> JsonObject:
        with self._errors():
            return await self.client.schedules()

    async def queue(self, name: str, changes: Mapping[str, Any]) -> JsonObject:
        with self._errors():
            if changes:
                return await self.client.update_queue(name, **changes)
            return await self.client.queue(name)

    async def redrive(self, name: str, ids: Sequence[str] | None) -> int:
        with self._errors():
            return await self.client.redrive(name, ids)

    async def purge(self, name: str) -> int:
        with self._errors():
            return await self.client.purge(name)


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator (and the stream it holds) early."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _stored_id(text: str) -> str:
    stored = job_id_of(text)
    if stored is None:
        raise ValidationError(f"not a job id: {text!r}", [{"pointer": "#/ids", "detail": "not a job id"}])
    return stored


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few lowercase words (``connection refused``, ``timed out``)."""
    import ssl

    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):  # its errno is OpenSSL's: os.strerror(1) said "operation not permitted"
            return "TLS error: " + re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(seen.strerror or seen))
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            # a name lookup's errno (-2) is getaddrinfo's, not the system's: os.strerror says "unknown error -2"
            errno = seen.errno or 0
            return (os.strerror(errno) if errno > 0 else str(seen.strerror or seen)).lower()
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    if "connection attempts failed" in text or "refused" in text:
        return "connection refused"
    return str(exc) or type(exc).__name__
