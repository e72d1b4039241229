"""``/v1/workers``: live workers (heartbeat younger than the backend's ``WORKER_TTL``)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from conveyor.api.deps import ApiState, state
from conveyor.api.models import WorkerList
from conveyor.api.problems import responses

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("", response_model=WorkerList, responses=responses(401, 403))
async def list_workers(st: Annotated[ApiState, Depends(state)]) -> Response:
    """Id, host, pid, queues, concurrency, running job ids and last heartbeat of each live worker."""
    workers = await (await st.backend()).workers(time.time())
    return JSONResponse({"items": [w.to_json() for w in workers]})
