"""Request bodies: JSON only (415 otherwise), and the size limit (``--max-body``), enforced while
the body streams in, before any parsing. And the time the server takes to start its answer."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.problems import from_error, problem
from conveyor.core.errors import BackendUnavailable

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

#: Seconds the server has to start its answer once a request arrived. The engines' clients wait
#: for a reply without a timeout of their own (a stop must be able to cancel them), so an engine
#: that went silent (hung, or behind a proxy that still accepts) would hold a request forever.
ANSWER_WITHIN = 10.0

#: Not bounded: one statement over every job of a queue, which may rightly take longer on a long
#: queue (a 503 would cancel it each time, and it could never be done over HTTP).
_WHOLE_QUEUE = re.compile(r"/v1/queues/[^/]+/(purge|redrive)")


class ContentTooLarge(HTTPException):
    """The request body is larger than the server accepts."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """413 when ``Content-Length`` exceeds ``max_body``, or as soon as the streamed body does;
    415 for a body that is not JSON (a body without ``Content-Type`` is taken as JSON), or that is
    compressed (it was parsed as it came: "not valid JSON", "not UTF-8 text")."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    def _refuse(self, scope: Scope) -> tuple[Scope, Response | None]:
        """The scope to pass on (with a JSON type added when none was given), or a refusal."""
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return scope, problem(400, "Content-Length is not a number")
            if int(length) > self.max_body:
                return scope, problem(413, f"the body is larger than {self.max_body} bytes")
        has_body = length not in (None, b"0") or b"transfer-encoding" in headers
        if scope["method"] not in _WITH_BODY or not has_body:
            return scope, None
        coding = headers.get(b"content-encoding", b"identity").strip().lower()
        if coding not in (b"", b"identity"):  # RFC 9110 §15.5.16: 415, naming what is accepted
            return scope, problem(415, f"send the body uncompressed: Content-Encoding {coding.decode('latin-1')!r} "
                                       "is not supported", headers={"Accept-Encoding": "identity"})
        # the first Content-Type, as the routes read it (``dict`` would keep the last)
        media = next((v for k, v in scope["headers"] if k == b"content-type"), b"").split(b";")[0].strip().lower()
        if not media:  # curl --data-binary, scripts: a body without a type (or an empty one) is taken as JSON
            return {**scope, "headers": [*((k, v) for k, v in scope["headers"] if k != b"content-type"),
                                         (b"content-type", b"application/json")]}, None
        if media != b"application/json" and not media.endswith(b"+json"):
            return scope, problem(415, f"send JSON (Content-Type: application/json), not {media.decode('latin-1')!r}")
        return scope, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope, refusal = self._refuse(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise ContentTooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except ContentTooLarge:
            if started:
                raise
            await problem(413, f"the body is larger than {self.max_body} bytes")(scope, receive, send)


class AnswerWithinMiddleware:
    """A 503 problem when the response has not started ``seconds`` after the request's last
    byte arrived: the engine did not answer. The 503 goes out at once; the handler is cancelled
    and may take a while to end (psycopg's cancel of a query in flight can itself wait ~10 s for
    a silent server). An event stream, once started, is not bounded; nor are purge and redrive."""

    def __init__(self, app: ASGIApp, seconds: float = ANSWER_WITHIN) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _WHOLE_QUEUE.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        await _Bounded(self.seconds, scope, receive, send).run(self.app)


class _Bounded:
    """One request under ``AnswerWithinMiddleware``."""

    def __init__(self, seconds: float, scope: Scope, receive: Receive, send: Send) -> None:
        self.seconds = seconds
        self.scope, self.receive, self.send = scope, receive, send
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + seconds  #: moved by each part of the body received
        self.started = False
        self.reply: asyncio.Task[None] | None = None  #: the 503, once sent: what the handler sends is dropped

    async def run(self, app: ASGIApp) -> None:
        request = asyncio.current_task()
        assert request is not None
        self.timer = self.loop.call_at(self.deadline, self._expire, request)
        try:
            await app(self.scope, self._receiving, self._sending)
        except asyncio.CancelledError:
            if self.reply is None or request.uncancel() > 0:  # not (only) this bound's cancel
                raise
        except Exception:
            if self.reply is None:
                raise  # else the handler failed as it was cancelled: the 503 is its answer
        finally:
            self.timer.cancel()
        if self.reply is not None:
            await self.reply

    def _expire(self, request: asyncio.Task[Any]) -> None:
        if self.started:
            return
        if self.loop.time() < self.deadline:  # a part of the body came since: the clock restarted
            self.timer = self.loop.call_at(self.deadline, self._expire, request)
            return
        detail = (f"the engine did not answer within {self.seconds:g} s; the request may still have taken "
                  "effect (a submit: send it again with the same Idempotency-Key)")
        self.reply = self.loop.create_task(from_error(BackendUnavailable(detail))(self.scope, self.receive, self.send))
        request.cancel()

    async def _receiving(self) -> Message:
        message = await self.receive()
        self.deadline = self.loop.time() + self.seconds  # from the last byte: a slow upload is not the engine
        return message

    async def _sending(self, message: Message) -> None:
        if self.reply is None:
            self.started = self.started or message["type"] == "http.response.start"
            await self.send(message)
