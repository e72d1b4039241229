"""The dashboard: one page (``/``) over the public API, for people rather than programs.

Queues with their counts and settings (pause, resume, redrive, purge), live workers, and the
jobs (filter by status, queue and task; page by cursor; cancel, retry; a job's whole JSON).
The page and its script are static and open, like ``/docs``: every figure on it comes from
``/v1/...`` calls made with the token the user types in, so the same scopes apply. The
Content-Security-Policy lets the page run only its own script and talk only to this server.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response

router = APIRouter(include_in_schema=False)

_STATIC = files("conveyor.api") / "static"
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_FILES = {  # route -> (file, media type)
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
PATHS = frozenset(_FILES)


def _route(path: str, name: str, media_type: str) -> None:
    body = (_STATIC / name).read_bytes()

    async def serve() -> Response:
        return Response(body, media_type=media_type, headers={
            "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    router.add_api_route(path, serve, methods=["GET"], name=f"dashboard {name}")


for _path, (_name, _type) in _FILES.items():
    _route(_path, _name, _type)
