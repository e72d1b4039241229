"""``/v1/schedules``: the app's periodic tasks and when each runs next."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from conveyor.api.deps import ApiState, state
from conveyor.api.models import ScheduleList
from conveyor.api.problems import responses
from conveyor.scheduler import describe

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


@router.get("", response_model=ScheduleList, responses=responses(401, 403))
async def list_schedules(st: Annotated[ApiState, Depends(state)]) -> Response:
    """Every periodic task of the app, with its previous and next tick."""
    now = time.time()
    return JSONResponse({"items": [describe(s, now) for s in st.app.schedules]})
