"""Request bodies: JSON only (415 otherwise), and the size limit (``--max-body``), enforced while
the body streams in, before any parsing."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.problems import problem

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class ContentTooLarge(HTTPException):
    """The request body is larger than the server accepts."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """413 when ``Content-Length`` exceeds ``max_body``, or as soon as the streamed body does;
    415 for a body that is not JSON (a body without ``Content-Type`` is taken as JSON)."""

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
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if not media:  # curl --data-binary, scripts: a body without a type is taken as JSON
            return {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}, None
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
