"""``/v1/tasks``: the registered tasks, their defaults and a JSON Schema of their parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from conveyor.api.deps import ApiState, state
from conveyor.api.models import TaskList
from conveyor.api.problems import responses

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.get("", response_model=TaskList, responses=responses(401, 403))
async def list_tasks(st: Annotated[ApiState, Depends(state)]) -> Response:
    """Every task the app registers, by name."""
    return JSONResponse({"items": [st.app.tasks[name].describe() for name in sorted(st.app.tasks)]})
