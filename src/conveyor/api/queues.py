"""``/v1/queues``: counts and settings, change settings, redrive dead letters, purge."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Response
from fastapi.responses import JSONResponse

from conveyor.api.deps import ApiState, no_query, state
from conveyor.api.models import Purged, QueueList, QueueOut, QueuePatch, Redrive, Redriven
from conveyor.api.problems import responses
from conveyor.backends.base import Backend, QueueInfo
from conveyor.core.errors import QueueNotFound, ValidationError
from conveyor.core.ids import job_id_of
from conveyor.core.job import Status

router = APIRouter(prefix="/v1/queues", tags=["queues"])
State = Annotated[ApiState, Depends(state)]
_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")



def _job_ids(given: list[str]) -> list[str]:
    """Job ids as stored (any case accepted); a 422 pointing at each one that is not a job id."""
    ids = [job_id_of(text) for text in given]
    errors = [{"pointer": f"#/ids/{i}", "detail": "not a job id"} for i, found in enumerate(ids) if found is None]
    if errors:
        raise ValidationError("ids must be job ids", errors)
    return [found for found in ids if found is not None]


def _check_name(name: str) -> str:
    if not 0 < len(name) <= 100 or not set(name) <= _CHARS:
        raise QueueNotFound(f"no queue named {name!r}")
    return name


@router.get("", response_model=QueueList, responses=responses(401, 403))
async def list_queues(st: State) -> Response:
    """Every queue: counts per status and settings."""
    infos = await (await st.backend()).queues_and(st.app.queue_names())
    return JSONResponse({"items": [q.to_json() for q in infos]})


async def _known(st: ApiState, backend: Backend, name: str) -> QueueInfo:
    """The queue ``name`` (the app names it, or the backend has jobs or settings for it); else 404."""
    return await backend.known_queue(_check_name(name), st.app.queue_names())


@router.get("/{name}", response_model=QueueOut, responses=responses(401, 403, 404))
async def get_queue(name: str, st: State) -> Response:
    """One queue; 404 unless the app names it or the backend has jobs or settings for it."""
    return JSONResponse((await _known(st, await st.backend(), name)).to_json())


@router.patch("/{name}", response_model=QueueOut, responses=responses(400, 401, 403, 404, 413, 415, 422),
              dependencies=[Depends(no_query)])
async def patch_queue(name: str, body: QueuePatch, st: State) -> Response:
    """Change settings (seconds): ``retention``, ``visibility_timeout``, ``max_deliveries``, ``result_ttl``,
    ``paused``; fields left out keep their values. 404 for a queue GET does not know (a typo must
    not make a paused queue while the real one runs on): declare a new queue with ``app.queue()``."""
    backend = await st.backend()
    known = await _known(st, backend, name)
    given = body.model_dump(exclude_none=True)
    if not given:
        return JSONResponse(known.to_json())
    current = await backend.queue_settings(name)
    await backend.save_queue_settings(name, current.replace(**given), fields=given)
    [info] = await backend.queues([name])
    return JSONResponse(info.to_json())


@router.post("/{name}/redrive", response_model=Redriven,
             responses=responses(400, 401, 403, 404, 409, 413, 415, 422), dependencies=[Depends(no_query)])
async def redrive(name: str, st: State, body: Annotated[Redrive | None, Body()] = None) -> Response:
    """Put the queue's dead letters (``failed`` jobs; only ``ids`` if given) back to ``queued``."""
    ids = _job_ids(body.ids) if body is not None and body.ids is not None else None
    backend = await st.backend()
    await _known(st, backend, name)
    jobs = await backend.requeue(name, ids, [Status.FAILED], time.time())
    return JSONResponse({"redriven": len(jobs)})


@router.post("/{name}/purge", response_model=Purged, responses=responses(401, 403, 404, 422),
             dependencies=[Depends(no_query)])
async def purge(name: str, st: State) -> Response:
    """Cancel every job of the queue that has not started yet."""
    backend = await st.backend()
    await _known(st, backend, name)
    purged = await backend.purge(name, time.time())
    return JSONResponse({"purged": purged})
