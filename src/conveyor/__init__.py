"""Conveyor: background jobs that are simple, fast and never lost."""

from conveyor.core.app import Conveyor, Schedule
from conveyor.core.context import Context, JobCancelled
from conveyor.core.errors import (
    BackendUnavailable,
    ConfigurationError,
    ConveyorError,
    InvalidArguments,
    JobFailed,
    JobNotFound,
    RegistrationError,
    UnknownTask,
    ValidationError,
)
from conveyor.core.handle import JobHandle
from conveyor.core.job import Job, Status
from conveyor.core.task import Task
from conveyor.core.workflows import chain, group

__all__ = [
    "BackendUnavailable",
    "ConfigurationError",
    "Context",
    "Conveyor",
    "ConveyorError",
    "InvalidArguments",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "RegistrationError",
    "Schedule",
    "Status",
    "Task",
    "UnknownTask",
    "ValidationError",
    "chain",
    "group",
]
__version__ = "0.1.0"
