"""Every error as RFC 9457 problem+json: ONE table from the error tree and HTTP codes.

A client's mistake never becomes a 500: core errors map through ``ERRORS``, FastAPI's own
(validation, malformed JSON, unknown routes, wrong methods) through ``HTTP`` and the handlers
below; anything else is a bug and gets a generic 500 without a traceback (logged server-side).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from conveyor.core.errors import (
    BackendUnavailable,
    ConfigurationError,
    ConveyorError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    UnknownTask,
    ValidationError,
)

log = logging.getLogger(__name__)
_UNION_TAG = re.compile(r"(constrained-)?(int|float|str|bool|bytes|none|list|dict)|[\w-]+\[.*\]")

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://conveyor.dev/problems/"
#: Seconds a client should wait before trying again after a 503.
RETRY_AFTER_UNAVAILABLE = 5

#: Error class → (status, type slug, title); the first class the error is an instance of wins.
#: A slug has one title here and in ``HTTP`` (RFC 9457: a type's title does not change).
ERRORS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (UnknownTask, 422, "unknown-task", "Unknown task"),
    (IdempotencyKeyReused, 422, "idempotency-key-reused", "Idempotency key reused with a different request"),
    (ValidationError, 422, "validation-error", "Request is invalid"),
    (JobNotFound, 404, "not-found", "Not found"),
    (InvalidTransition, 409, "invalid-state-transition", "Job status does not allow this"),
    (IdempotencyKeyInFlight, 409, "idempotency-key-in-use", "A request with this idempotency key is in flight"),
    (BackendUnavailable, 503, "unavailable", "Backend unavailable"),
    (JobFailed, 409, "job-failed", "Job failed"),
    (ConfigurationError, 500, "internal", "Internal error"),
    (ConveyorError, 500, "internal", "Internal error"),
)

#: HTTP status (raised by the framework, middleware or routes) → (type slug, title).
HTTP: Mapping[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("insufficient-scope", "Insufficient scope"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("content-too-large", "Content too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Request is invalid"),
    500: ("internal", "Internal error"),
    503: ("unavailable", "Backend unavailable"),
}

#: Why a body could not be read, where it is not a syntax error: the start of the parser's
#: message (jiter's on ``POST /v1/jobs``, the standard library's on the other routes) → ours.
_UNREADABLE: tuple[tuple[str, str], ...] = (
    ("number out of range", "a number in the body is too large: more than 4300 digits"),
    ("Exceeds the limit (4300 digits)", "a number in the body is too large: more than 4300 digits"),
    ("unexpected end of hex escape", "a \\u escape in the body is a lone UTF-16 surrogate, not a character"),
    ("lone leading surrogate", "a \\u escape in the body is a lone UTF-16 surrogate, not a character"),
    ("recursion limit exceeded", "the body nests arrays and objects too deeply"),
    ("maximum recursion depth", "the body nests arrays and objects too deeply"),
    ("'utf-8' codec can't decode", "the body is not UTF-8 text"),
)

#: The detail for a request without the body its route needs.
EMPTY_BODY = "the body is empty: send a JSON object"
#: An empty body, as FastAPI reports it on the routes that parse the body themselves.
MISSING_BODY = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}

#: Methods in the order ``Allow`` names them.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

#: Extra headers per status (RFC 9110: 503 with Retry-After; 409 in flight: try again in 1 s).
HEADERS: Mapping[int, Mapping[str, str]] = {503: {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)}}


class ProblemError(BaseModel):
    """One invalid part of a request: a JSON Pointer into the body, or a query/path parameter."""

    model_config = ConfigDict(extra="allow")
    pointer: str | None = None
    parameter: str | None = None
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem detail."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = None


class ProblemResponse(JSONResponse):
    """problem+json that can always be sent: a pointer or detail may quote what the client sent,
    and a batch's body (read by the standard library) may hold a lone surrogate (``{"\\ud800": 1}``
    as a kwargs key) that UTF-8 cannot encode; such a body goes out with non-ASCII escaped, as the
    client wrote it, instead of failing as a 500."""

    media_type = MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    default_slug, default_title = HTTP.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": TYPE_BASE + (slug or default_slug),
        "title": title or default_title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [dict(e) for e in errors]
    all_headers = {**HEADERS.get(status, {}), **(headers or {})}
    return ProblemResponse(body, status_code=status, headers=all_headers)


def from_error(exc: BaseException) -> JSONResponse:
    """The problem for an error of the tree (or a generic 500 for anything else)."""
    for kind, status, slug, title in ERRORS:
        if isinstance(exc, kind):
            if status >= 500 and status != 503:
                log.error("internal error: %s", exc, exc_info=exc)
                return problem(500, "the server failed to process the request", slug=slug, title=title)
            errors = exc.errors if isinstance(exc, ValidationError) else None
            headers = {"Retry-After": "1"} if isinstance(exc, IdempotencyKeyInFlight) else None
            detail = str(exc) or title
            if isinstance(exc, ValidationError) and not errors:
                errors = [{"pointer": "#", "detail": detail}]
            return problem(status, detail, slug=slug, title=title, errors=errors, headers=headers)
    log.error("unexpected error", exc_info=exc)
    return problem(500, "the server failed to process the request")


def validation_errors(exc: RequestValidationError) -> tuple[int, list[dict[str, str]]]:
    """FastAPI's validation errors as pointers; 400 when the body is not JSON at all."""
    out: list[dict[str, str]] = []
    status = 422
    for err in exc.errors():
        # pydantic names the member of a union it tried ("int", "function-after[...]"): not a body path
        loc = [str(part) for part in err.get("loc", ()) if not _UNION_TAG.fullmatch(str(part))]
        where, rest = (loc[0], loc[1:]) if loc else ("body", [])
        if err.get("type") == "missing" and loc == ["body"]:  # no body at all: not JSON either
            out.append({"pointer": "#", "detail": EMPTY_BODY})
            status = 400
            continue
        if err.get("type") == "json_invalid":  # FastAPI's loc holds the character position; jiter's none
            reason = str((err.get("ctx") or {}).get("error", "invalid JSON"))
            out.append({"pointer": "#", "detail": unreadable_body(reason, rest[0] if rest else None)})
            status = 400
            continue
        message = str(err.get("msg", "invalid"))
        if where == "body":
            pointer = "#" + "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in rest)
            out.append({"pointer": pointer, "detail": message})
        else:
            out.append({"parameter": rest[0] if rest else where, "in": where, "detail": message})
    return status, out


def summary(errors: Sequence[Mapping[str, str]], shown: int = 3) -> str:
    """A 422's ``detail``: what is wrong and where (``#/priority: ...``, ``?limit: ...``), for
    a reader of ``detail`` alone; it said "1 part(s) of the request are invalid"."""
    parts = [f"{e.get('pointer') or '?' + str(e.get('parameter'))}: {e.get('detail')}" for e in errors[:shown]]
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return "; ".join(parts) + more


def unreadable_body(reason: str, position: str | None = None) -> str:
    """The detail for a body that could not be parsed, with where it failed when the parser said:
    jiter ends its message with "at line L column C", the standard library gives a position."""
    head, at_line, where = reason.partition(" at line ")
    ours = next((text for start, text in _UNREADABLE if head.startswith(start)), None)
    detail = ours or f"the body is not valid JSON: {head}"
    if at_line:
        return f"{detail} (at line {where})"
    return detail if position is None else f"{detail} (at character {position})"


def allowed(request: Request) -> str:
    """``Allow`` for a 405: every method some route of the path answers (Starlette names only
    those of the first route it found: one per method here), and HEAD with GET (``HeadMiddleware``)."""
    routes = request.app.router.routes
    methods = {m for m in _METHODS
               if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(m for m in _METHODS if m in methods)


def install(api: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    async def on_conveyor_error(request: Request, exc: Exception) -> JSONResponse:
        return from_error(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI's "There was an error parsing the body" for what json.loads raised besides a syntax error
            detail = unreadable_body(str(exc.__cause__))
            return problem(400, detail, errors=[{"pointer": "#", "detail": detail}])
        detail = exc.detail if isinstance(exc.detail, str) else HTTP.get(exc.status_code, ("", "Error"))[1]
        headers = {**(exc.headers or {}), "Allow": allowed(request)} if exc.status_code == 405 else exc.headers
        return problem(exc.status_code, detail, headers=headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        status, errors = validation_errors(exc)
        if status == 400:
            return problem(400, errors[0]["detail"], errors=errors)
        return problem(422, summary(errors), errors=errors)

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        return from_error(exc)

    api.add_exception_handler(ConveyorError, on_conveyor_error)
    api.add_exception_handler(StarletteHTTPException, on_http_error)
    api.add_exception_handler(RequestValidationError, on_validation_error)
    api.add_exception_handler(Exception, on_bug)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the problems a route may answer (plus 500/503 everywhere)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 500, 503}):
        out[status] = {"model": Problem, "description": HTTP.get(status, ("", "Error"))[1]}
    return out


def fix_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Problems are ``application/problem+json``: move every 4xx/5xx body to that media type."""
    ref = {"$ref": "#/components/schemas/Problem"}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for code, response in operation.get("responses", {}).items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = {MEDIA_TYPE: {"schema": ref}}
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
