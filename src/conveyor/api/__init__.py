"""The HTTP API (SPEC §6): ``create_api(app)`` returns the FastAPI application.

One module per resource (``jobs``, ``queues``, ``tasks``, ``workers``, ``health``), and the
``dashboard`` page over them; every
error becomes problem+json through ``problems``; ``auth`` and ``limits`` are ASGI middleware
that answer before the body is parsed; ``events`` streams job changes from one shared watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI

from conveyor.api import dashboard, health, jobs, problems, queues, schedules, tasks, workers
from conveyor.api.auth import AuthMiddleware, Token, parse_tokens, tokens_from_env
from conveyor.api.deps import ApiState
from conveyor.api.events import KEEPALIVE
from conveyor.api.head import HeadMiddleware
from conveyor.api.limits import ANSWER_WITHIN, AnswerWithinMiddleware, BodyLimitMiddleware
from conveyor.core.app import Conveyor
from conveyor.core.errors import BackendUnavailable, ConfigurationError

log = logging.getLogger(__name__)

#: Default request body limit (``--max-body``): 1 MiB.
MAX_BODY = 1024 * 1024
#: Seconds a start waits for the queue settings to be applied before it serves anyway: an
#: engine that does not answer (a silent one takes its connect timeout, 5 s) gets them later.
SETTINGS_WAIT = 1.0


def create_api(
    app: Conveyor,
    *,
    tokens: Sequence[Token] | str | None = None,
    max_body: int = MAX_BODY,
    housekeeping: bool = True,
    keepalive: float = KEEPALIVE,
    answer_within: float = ANSWER_WITHIN,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The API of ``app``. ``tokens``: parsed tokens or ``CONVEYOR_API_TOKENS`` text (None: that
    variable; empty: no auth). ``housekeeping``: sweep expired leases and old records every ~1 s.
    ``on_fatal``: called with an error other than an outage (a configuration error the engine
    revealed) from applying the queue settings, to stop the server; None: a start fails with it,
    later it is only logged."""
    token_list = tokens_from_env() if tokens is None else parse_tokens(tokens) if isinstance(tokens, str) else tokens
    st = ApiState(app, keepalive=keepalive)

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        down = asyncio.Event()  # the engine refused: serve at once, no need to wait SETTINGS_WAIT
        settings = loop.create_task(_apply_settings(app, st, down))
        said_down = loop.create_task(down.wait())
        await asyncio.wait([settings, said_down], timeout=SETTINGS_WAIT, return_when=asyncio.FIRST_COMPLETED)
        said_down.cancel()
        if settings.done() and on_fatal is None:
            settings.result()  # an error other than an outage (a configuration error): no start
        else:
            # the engine is down or silent: serve (/readyz says 503) and apply the settings once it
            # answers; an error other than an outage then stops the server (on_fatal), as at a start
            settings.add_done_callback(lambda task: _fatal_if_failed(task, on_fatal))
        sweeper = loop.create_task(_sweep_forever(st)) if housekeeping else None
        try:
            yield
        finally:
            for task in (settings, sweeper):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await st.watcher.close()
            for backend in st.opened:
                await backend.close()

    api = FastAPI(
        title="Conveyor",
        version=_version(),
        description="Background jobs: submit, watch, cancel and retry jobs; manage queues.",
        lifespan=lifespan,
    )
    api.state.conveyor = st
    for module in (jobs, queues, tasks, schedules, workers, health, dashboard):
        api.include_router(module.router)
    problems.install(api)
    api.add_middleware(AnswerWithinMiddleware, seconds=answer_within)
    api.add_middleware(HeadMiddleware)
    api.add_middleware(BodyLimitMiddleware, max_body=max_body)
    api.add_middleware(AuthMiddleware, tokens=token_list)
    _document(api, bool(token_list))
    return api


async def _apply_settings(app: Conveyor, st: ApiState, down: asyncio.Event) -> None:
    """Apply the app's queue settings to the engine, once a second until it answers; ``down``
    is set at the first failure."""
    while True:
        try:
            await app.apply_queue_settings(await st.backend())
        except BackendUnavailable as exc:  # serve anyway: /readyz says 503 until it answers
            if not down.is_set():
                log.warning("backend unavailable at start: %s; the queue settings are applied once it answers", exc)
                down.set()
            await asyncio.sleep(1.0)
        else:
            if down.is_set():
                log.info("queue settings applied: the backend answers")
            return


def _fatal_if_failed(task: asyncio.Task[None], on_fatal: Callable[[BaseException], None] | None) -> None:
    error = None if task.cancelled() else task.exception()
    if error is None:
        return
    if on_fatal is None:
        log.error("applying the queue settings failed", exc_info=error)
    else:
        on_fatal(error)


async def _sweep_forever(st: ApiState) -> None:
    """Housekeeping like a worker's: expired leases, retention, old records (bounded batches)."""
    while True:
        await asyncio.sleep(random.uniform(0.8, 1.2))
        try:
            report = await (await st.backend()).sweep(time.time())
            if report.total:
                log.info("housekeeping: %s", report)
        except BackendUnavailable as exc:
            log.warning("housekeeping failed: %s", exc)
        except ConfigurationError as exc:  # said in a line; the settings' task stops the server (on_fatal)
            log.error("housekeeping failed: %s", exc)
        except Exception:
            log.exception("housekeeping failed")


def _document(api: FastAPI, secured: bool) -> None:
    """OpenAPI: problems as ``application/problem+json``, and the bearer scheme when tokens are set."""
    original = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = problems.fix_openapi(original())
            if secured:
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
                schema["security"] = [{"bearer": []}]
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    from conveyor import __version__

    return __version__


__all__ = ["MAX_BODY", "create_api"]
