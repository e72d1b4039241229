"""Request and response bodies, as the OpenAPI document shows them (strict JSON types)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from conveyor.core.task import MAX_TASK_NAME

#: Strict, yet ints are accepted (and become floats); bools are not. Finite: NaN (which the JSON
#: parsers take) is no number of seconds, and was refused as "less than or equal to 1209600".
Seconds = Annotated[StrictFloat, Field(allow_inf_nan=False)]


class SubmitJob(BaseModel):
    """One job to run: the task's name, its arguments and options."""

    model_config = ConfigDict(extra="forbid")
    task: Annotated[StrictStr, Field(min_length=1, max_length=MAX_TASK_NAME)]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: StrictStr | None = None
    priority: Annotated[StrictInt, Field(ge=0, le=9)] | None = None
    delay: Annotated[Seconds, Field(ge=0, le=14 * 86400)] | None = None
    eta: StrictStr | None = Field(default=None, description="RFC 3339 time; not before it")
    max_retries: Annotated[StrictInt, Field(ge=0, le=1000)] | None = None
    timeout: Annotated[Seconds, Field(gt=0, le=7 * 86400)] | None = None
    depends_on: Annotated[list[StrictStr], Field(max_length=1000)] | None = None
    metadata: dict[str, Any] | None = None
    webhook: Annotated[StrictStr, Field(max_length=2048)] | None = None

    def options(self) -> dict[str, Any]:
        """The enqueue options given (everything but task, args and kwargs)."""
        return {k: v for k, v in self.model_dump(exclude={"task", "args", "kwargs"}).items() if v is not None}


class SubmitBatch(BaseModel):
    """Up to 1000 jobs, accepted all together or not at all."""

    model_config = ConfigDict(extra="forbid")
    jobs: Annotated[list[SubmitJob], Field(min_length=1, max_length=1000)]


class Progress(BaseModel):
    fraction: float | None = None
    message: str | None = None


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str | None = None
    message: str | None = None
    traceback: str | None = None


class RateLimit(BaseModel):
    count: int
    per: float


class Attempt(BaseModel):
    attempt: int | None
    worker_id: str | None
    started_at: str | None
    finished_at: str | None
    status: str | None
    error: dict[str, Any] | None


class JobOut(BaseModel):
    """A job (SPEC §3)."""

    id: str
    task: str
    queue: str
    status: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    progress: dict[str, Any] | None
    result: Any
    error: dict[str, Any] | None
    attempt: int
    max_retries: int
    timeout: float | None
    depends_on: list[str]
    idempotency_key: str | None
    metadata: dict[str, Any]
    webhook: str | None
    deliveries: int
    cancel_requested: bool
    created_at: str
    scheduled_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str
    limit_key: str | None
    concurrency_limit: int | None
    rate_limit: RateLimit | None
    attempts: list[Attempt]


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class JobBatch(BaseModel):
    jobs: list[JobOut]


class QueueOut(BaseModel):
    name: str
    queued: int
    scheduled: int
    running: int
    failed: int
    retention: float
    visibility_timeout: float
    max_deliveries: int
    result_ttl: float
    paused: bool


class QueueList(BaseModel):
    items: list[QueueOut]


class QueuePatch(BaseModel):
    """Settings to change (seconds); those left out keep their values."""

    model_config = ConfigDict(extra="forbid")
    retention: Seconds | None = None
    visibility_timeout: Seconds | None = None
    max_deliveries: StrictInt | None = None
    result_ttl: Seconds | None = None
    paused: StrictBool | None = None


class Redrive(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: Annotated[list[StrictStr], Field(max_length=1000)] | None = None


class Redriven(BaseModel):
    redriven: int


class Purged(BaseModel):
    purged: int


class TaskOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    queue: str
    priority: int
    max_retries: int
    timeout: float | None
    parameters: dict[str, Any]


class TaskList(BaseModel):
    items: list[TaskOut]


class ScheduleOut(BaseModel):
    task: str
    cron: str
    tz: str
    kwargs: dict[str, Any]
    catch_up: float | None
    previous_run_at: str | None  #: null when the schedule cannot be computed (``error`` says why)
    next_run_at: str | None
    error: str | None = None


class ScheduleList(BaseModel):
    items: list[ScheduleOut]


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    running: list[str]
    started_at: str | None
    last_heartbeat: str | None


class WorkerList(BaseModel):
    items: list[WorkerOut]


class Health(BaseModel):
    status: str
