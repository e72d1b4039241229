"""``/v1/jobs``: submit (one, or a batch), read, list, stream, cancel, retry."""

from __future__ import annotations

import time
from typing import Annotated

import pydantic
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from conveyor import metrics
from conveyor.api import events
from conveyor.api.deps import ApiState, no_query, state
from conveyor.api.models import JobBatch, JobList, JobOut, SubmitBatch, SubmitJob
from conveyor.api.problems import MISSING_BODY, responses, summary
from conveyor.backends.base import JobQuery
from conveyor.core.checks import order_by_dependencies
from conveyor.core.errors import (
    InvalidTransition,
    JobNotFound,
    UnknownTask,
    ValidationError,
)
from conveyor.core.idempotency import check_replay, key_from_header
from conveyor.core.ids import job_id_of
from conveyor.core.job import Job, Status

TEXT = {"type": "string"}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
State = Annotated[ApiState, Depends(state)]
#: Seconds a client should wait before polling a job that is not finished.
POLL_AFTER = "1"
UTF8_BOM = b"\xef\xbb\xbf"


def job_response(job: Job, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(job.to_json(), status_code=status, headers=headers)


def accepted(job: Job) -> JSONResponse:
    """202 for a job just submitted (or re-run): where to watch it, and when to look."""
    where = f"/v1/jobs/{job.id}"
    return job_response(job, 202, {"Location": where, "Content-Location": where, "Retry-After": POLL_AFTER})


async def find(st: ApiState, job_id: str) -> Job:
    stored_id = job_id_of(job_id)
    jobs = await (await st.backend()).get_jobs([stored_id]) if stored_id else []
    if not jobs:
        raise JobNotFound(f"no job has id {job_id!r}")
    return jobs[0]


@router.post(
    "", status_code=202, response_model=JobOut,
    responses={200: {"model": JobOut, "description": "Idempotent replay: the job this key made"},
               **responses(400, 401, 403, 409, 413, 415, 422)},
    openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SubmitJob"}}}},
        # 1–255 printable ASCII characters, bare or quoted (``\"`` and ``\\`` escaped): 512 at most
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "description": "1–255 printable ASCII characters, bare or as a quoted string",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 512}}],
    },
)
async def submit(request: Request) -> Response:
    """Submit a job; 202 with the job. With ``Idempotency-Key``, a repeat gets the same job (200)."""
    # the hot path: the body is parsed here in one pydantic call rather than by FastAPI's
    # dependency machinery (a third of the request's time); errors take the same route
    st: ApiState = request.app.state.conveyor
    no_query(request)
    header_key = request.headers.get("idempotency-key")
    # a UTF-8 byte order mark (Notepad, PowerShell) is ignored, as RFC 8259 allows and the other
    # routes' parser does: it was "not valid JSON: expected value (at line 1 column 1)" here alone
    raw = (await request.body()).removeprefix(UTF8_BOM)
    if not raw:
        raise RequestValidationError([MISSING_BODY])
    try:
        body = SubmitJob.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    idempotency_key = None if header_key is None else key_from_header(header_key)
    if header_key is not None and idempotency_key is None:
        raise HTTPException(400, "Idempotency-Key must be 1–255 printable ASCII characters, bare or as a quoted string")
    if len(request.headers.getlist("idempotency-key")) > 1:  # the first alone was used: which one was meant?
        raise HTTPException(400, "give one Idempotency-Key header, not several")
    with st.in_flight.hold(idempotency_key):
        job = st.app.build_job(body.task, body.args, body.kwargs, now=time.time(), key=idempotency_key,
                               **body.options())
        [(stored, created)] = await (await st.backend()).enqueue([job])
    if not created:
        check_replay(job, stored)
        return job_response(stored, 200, {"Content-Location": f"/v1/jobs/{stored.id}", "Idempotent-Replayed": "true"})
    metrics.job_enqueued(stored)
    return accepted(stored)


@router.post("/batch", status_code=202, response_model=JobBatch, responses=responses(400, 401, 403, 413, 415, 422),
             dependencies=[Depends(no_query)])
async def submit_batch(body: SubmitBatch, st: State, request: Request) -> Response:
    """Submit up to 1000 jobs in one round trip: all are accepted, or none (422 names each problem)."""
    if "idempotency-key" in request.headers:  # a retried batch would make every job again: say so
        raise HTTPException(400, "Idempotency-Key applies to POST /v1/jobs only; a batch is not deduplicated")
    now = time.time()
    jobs: list[Job] = []
    errors: list[dict[str, str]] = []
    kinds: set[type[ValidationError]] = set()
    for i, item in enumerate(body.jobs):
        try:
            jobs.append(st.app.build_job(item.task, item.args, item.kwargs, now=now, **item.options()))
        except ValidationError as exc:
            kinds.add(type(exc))
            for err in exc.errors or [{"pointer": "#", "detail": str(exc)}]:
                errors.append({**err, "pointer": f"#/jobs/{i}" + err.get("pointer", "#").removeprefix("#")})
    if errors:
        # unknown tasks alone: the problem type POST /v1/jobs gives them (a client tells them apart)
        kind = UnknownTask if kinds == {UnknownTask} else ValidationError
        raise kind(f"{len(errors)} problem(s) in the batch; no job was submitted", errors)
    stored = await (await st.backend()).enqueue(order_by_dependencies(jobs))
    by_id = {job.id: result for job, result in zip(order_by_dependencies(jobs), stored, strict=True)}
    out = [by_id[job.id][0] for job in jobs]
    for job, created in stored:
        if created:
            metrics.job_enqueued(job)
    return JSONResponse({"jobs": [job.to_json() for job in out]}, status_code=202)


@router.get("", response_model=JobList, responses=responses(401, 403, 422))
async def list_jobs(
    request: Request,
    st: State,
    status: Status | None = None,
    task: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    queue: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
) -> Response:
    """Jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page. Each filter
    takes one value (a repeat is a 422, not a filter on the last value only)."""
    _check_list_query(request, {"task": task, "queue": queue})
    try:
        page = await (await st.backend()).list_jobs(JobQuery(status, task, queue, limit, cursor))
    except ValidationError as exc:  # the list has no body: a backend's "#/cursor" is the query's cursor
        errors = [{"parameter": e.get("pointer", "#").removeprefix("#/"), "in": "query", "detail": e["detail"]}
                  for e in exc.errors]
        raise ValidationError(str(exc), errors) from None
    return JSONResponse({"items": [job.to_json() for job in page.items], "next_cursor": page.next_cursor})


_LIST_PARAMETERS = ("status", "task", "queue", "limit", "cursor")


def _check_list_query(request: Request, names: dict[str, str | None]) -> None:
    """422 naming each list parameter given twice, each one the list does not know (``?stauts=failed``
    listed every job: a script that cancels what it gets would cancel them all), and each name
    filter holding U+0000 (no task or queue has one, and PostgreSQL cannot even compare such text)."""
    errors = [{"parameter": name, "in": "query", "detail": "give one value, not several"}
              for name in _LIST_PARAMETERS if len(request.query_params.getlist(name)) > 1]
    errors += [{"parameter": name, "in": "query", "detail": f"unknown parameter: use {', '.join(_LIST_PARAMETERS)}"}
               for name in dict.fromkeys(request.query_params) if name not in _LIST_PARAMETERS]
    errors += [{"parameter": name, "in": "query", "detail": "must not contain U+0000"}
               for name, value in names.items() if value is not None and "\x00" in value]
    if errors:
        raise ValidationError(summary(errors), errors)


@router.get(
    "/{job_id}", response_model=JobOut,
    responses={304: {"description": "Not modified since the ETag given in If-None-Match"},
               **responses(401, 403, 404)},
)
async def get_job(
    job_id: str, st: State, if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None
) -> Response:
    """One job; ``ETag`` is its revision, ``If-None-Match`` with it answers 304."""
    job = await find(st, job_id)
    etag = f'"{job.revision}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if not job.status.terminal:
        headers["Retry-After"] = POLL_AFTER
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return job_response(job, 200, headers)


def _matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/{job_id}/events",
    responses={200: {"description": "An event stream", "content": {"text/event-stream": {"schema": TEXT}}},
               204: {"description": "The client already saw the terminal event"},
               **responses(401, 403, 404)},
    response_class=StreamingResponse,
)
async def job_events(
    job_id: str, st: State, last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None
) -> Response:
    """Server-Sent Events: ``event: job`` on every change (``id:`` = revision) until a terminal status."""
    job = await find(st, job_id)
    last = _event_id(last_event_id)
    if last is not None and last > job.revision:  # no id this job's stream sent: start over
        last = None
    if last is not None and job.status.terminal and job.revision == last:
        return Response(status_code=204)
    return StreamingResponse(
        events.stream(st.watcher, job, last, st.keepalive),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event_id(header: str | None) -> int | None:
    """``Last-Event-ID`` as a revision; None for anything else (the stream starts over, as it does
    for a revision the job has not reached: the client would get no event, not even the last). Only
    ASCII digits that ``int()`` takes: "²" is a digit to ``str.isdigit``, and more than 4300
    digits exceed Python's limit (both were a 500)."""
    text = (header or "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:
        return None


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, responses=responses(401, 403, 404, 409, 422),
             dependencies=[Depends(no_query)])
async def cancel(job_id: str, st: State) -> Response:
    """Cancel: a pending job at once, a running one cooperatively. 409 for a job that already finished
    otherwise; cancelling a cancelled job again is a no-op (202)."""
    stored_id = job_id_of(job_id)
    job = await (await st.backend()).cancel(stored_id, time.time()) if stored_id else None
    if job is None:
        raise JobNotFound(f"no job has id {job_id!r}")
    if job.status.terminal and job.status is not Status.CANCELLED:
        raise InvalidTransition(f"job {job.id} already {job.status}; it cannot be cancelled")
    return job_response(job, 202)


RETRYABLE = (Status.FAILED, Status.CANCELLED, Status.EXPIRED)


@router.post("/{job_id}/retry", status_code=202, response_model=JobOut, responses=responses(401, 403, 404, 409, 422),
             dependencies=[Depends(no_query)])
async def retry(job_id: str, st: State) -> Response:
    """Run a failed, cancelled or expired job again (attempts reset): ``queued``, or ``waiting``
    while one of its ``depends_on`` parents is pending. 409 for any other status, and for a job
    whose parent ended failed, cancelled or expired (the detail names it: retry that one first)."""
    job = await find(st, job_id)  # (the id in any case: job.id is the stored one)
    if job.status not in RETRYABLE:
        raise InvalidTransition(f"job {job.id} is {job.status}; only failed, cancelled or expired jobs can be retried")
    requeued = await (await st.backend()).requeue(None, [job.id], RETRYABLE, time.time())
    if not requeued:  # it changed between the two reads
        raise InvalidTransition(f"job {job.id} can no longer be retried")
    return accepted(requeued[0])


