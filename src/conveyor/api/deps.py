"""What every route shares: the app, its backend in this server's loop, the event watcher."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from conveyor.api.events import KEEPALIVE, Watcher
from conveyor.api.idempotency import InFlight
from conveyor.api.problems import summary
from conveyor.backends.base import Backend
from conveyor.core.app import Conveyor
from conveyor.core.errors import ValidationError


@dataclass
class ApiState:
    """One server's state (kept on ``FastAPI.state.conveyor``; no globals)."""

    app: Conveyor
    keepalive: float = KEEPALIVE
    watcher: Watcher = field(init=False)
    in_flight: InFlight = field(default_factory=InFlight)
    opened: list[Backend] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.watcher = Watcher(self.backend)

    async def backend(self) -> Backend:
        """The app's backend for this server's event loop (opened on first use, retried after failures)."""
        backend = await self.app.backend()
        if not self.opened:
            self.opened.append(backend)
        return backend


def no_query(request: Request) -> None:
    """422 naming each query parameter given to a route that takes none: ``POST /v1/jobs?priority=9``
    submitted at the task's priority, and ``PATCH /v1/queues/q?paused=true`` changed nothing."""
    if not request.scope.get("query_string"):
        return
    errors = [{"parameter": name, "in": "query",
               "detail": "unknown parameter: this route takes none (options go in the JSON body)"}
              for name in dict.fromkeys(request.query_params)]
    if errors:
        raise ValidationError(summary(errors), errors)


async def state(request: Request) -> ApiState:
    api_state: ApiState = request.app.state.conveyor
    return api_state
