"""``/healthz`` (the process answers), ``/readyz`` (the backend answers), ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from conveyor import metrics
from conveyor.api.deps import ApiState, state
from conveyor.api.models import Health
from conveyor.api.problems import responses

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
    """Counters and timings per task and queue (of every process under ``conveyor up``) and queue depth."""
    queues = await (await st.backend()).queues()
    return Response(metrics.render(queues), media_type=metrics.CONTENT_TYPE)
