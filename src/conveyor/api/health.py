"""``/healthz`` (the process answers), ``/readyz`` (the backend answers), ``/metrics`` (Prometheus:
answered while the backend is down too, saying so)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from conveyor import metrics
from conveyor.api.deps import ApiState, state
from conveyor.api.models import Health
from conveyor.api.problems import responses
from conveyor.core.errors import BackendUnavailable

TEXT = {"type": "string"}
router = APIRouter(tags=["health"])
State = Annotated[ApiState, Depends(state)]


@router.get("/healthz", response_model=Health, responses=responses())
async def healthz() -> Response:
    """Liveness: 200 while the process serves requests."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=Health, responses=responses())
async def readyz(st: State) -> Response:
    """Readiness: 200 when the backend answers a ping, else 503 with ``Retry-After``."""
    await (await st.backend()).ping()
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": TEXT}}},
               **responses(401, 403)},
    response_class=Response,
)
async def prometheus(st: State) -> Response:
    """Counters and timings per task and queue (of every process under ``conveyor up``), queue depth,
    and ``conveyor_backend_up``. While the backend is down: 200 all the same, with the counters,
    no depth and ``conveyor_backend_up 0`` (a failed scrape would lose every series; Prometheus
    alerts on such a gauge). The depth covers the queues ``GET /v1/queues`` lists: a queue the
    app declares has its series (at 0) before its first job."""
    try:
        queues = await (await st.backend()).queues_and(st.app.queue_names())
    except BackendUnavailable:
        return Response(metrics.render([]) + _backend_up(0), media_type=metrics.CONTENT_TYPE)
    return Response(metrics.render(queues) + _backend_up(1), media_type=metrics.CONTENT_TYPE)


def _backend_up(up: int) -> bytes:
    return (b"# HELP conveyor_backend_up 1 when the backend answered this scrape, else 0.\n"
            b"# TYPE conveyor_backend_up gauge\n"
            b"conveyor_backend_up %d\n" % up)
