"""Bearer tokens with scopes, from ``CONVEYOR_API_TOKENS="name:token:scope,scope;..."``.

Scopes: ``read`` (every GET, ``/metrics`` included), ``submit`` (POST /v1/jobs and
/v1/jobs/batch; implies read), ``admin`` (everything). ``/healthz``, ``/readyz``, the OpenAPI
document and the dashboard's static files stay open. Checked in an ASGI middleware, before the
body is read: an unauthenticated client learns nothing about its request, and cannot make the
server parse it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.api.dashboard import PATHS as DASHBOARD_PATHS
from conveyor.api.problems import problem
from conveyor.core.errors import ConfigurationError

SCOPES = ("read", "submit", "admin")
#: What each scope grants.
IMPLIES: Mapping[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "submit": frozenset({"read", "submit"}),
    "admin": frozenset({"read", "submit", "admin"}),
}
#: open to all: health checks, and static pages whose data comes from authenticated calls
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                        *DASHBOARD_PATHS})
SUBMIT_PATHS = frozenset({"/v1/jobs", "/v1/jobs/batch"})


@dataclass(frozen=True, slots=True)
class Token:
    """One API token: who (``name``), the secret, and what it may do."""

    name: str
    secret: str
    scopes: frozenset[str]


def parse_tokens(text: str | None) -> list[Token]:
    """Parse ``name:token:scope,scope;...``; ``ConfigurationError`` on a malformed entry."""
    tokens: list[Token] = []
    for entry in (text or "").split(";"):
        if not entry.strip():
            continue
        parts = entry.strip().split(":")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ConfigurationError("CONVEYOR_API_TOKENS entries look like name:token:scope,scope")
        if not is_sendable(parts[1]):
            raise ConfigurationError(f"CONVEYOR_API_TOKENS: token {parts[0]!r} must be printable ASCII without "
                                     "spaces (a client sends it in a header; no request could match it)")
        scopes = frozenset(s.strip() for s in parts[2].split(",") if s.strip())
        unknown = scopes - set(SCOPES)
        if not scopes or unknown:
            raise ConfigurationError(
                f"CONVEYOR_API_TOKENS: token {parts[0]!r} needs scopes among read, submit, admin"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
            )
        tokens.append(Token(parts[0], parts[1], scopes))
    return tokens


def is_sendable(secret: str) -> bool:
    """Whether ``secret`` can travel as ``Authorization: Bearer <secret>``: printable ASCII, no spaces
    (HTTP clients refuse other text in a header, or the server reads its bytes as Latin-1)."""
    return bool(secret) and all("!" <= c <= "~" for c in secret)


def tokens_from_env() -> list[Token]:
    return parse_tokens(os.environ.get("CONVEYOR_API_TOKENS"))


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs (None: open to all)."""
    if path in OPEN_PATHS:
        return None
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if method == "POST" and path.rstrip("/") in SUBMIT_PATHS:
        return "submit"
    return "admin"


class AuthMiddleware:
    """401 without a known bearer token, 403 when its scopes do not cover the request."""

    def __init__(self, app: ASGIApp, tokens: Sequence[Token]) -> None:
        self.app = app
        self.tokens = list(tokens)

    def _find(self, secret: str) -> Token | None:
        found = None
        for token in self.tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(token.secret.encode(), secret.encode()):
                found = token
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.tokens:
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        kind, _, secret = header.partition(" ")
        token = self._find(secret.strip()) if kind.lower() == "bearer" and secret.strip() else None
        if token is None:
            response = problem(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                               headers={"WWW-Authenticate": 'Bearer realm="conveyor"'})
        elif not any(needed in IMPLIES[s] for s in token.scopes):
            response = problem(403, f"token {token.name!r} lacks the {needed!r} scope",
                               headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'})
        else:
            scope.setdefault("state", {})["token"] = token.name
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
