"""Conveyor: background jobs that are simple, fast and never lost.

The names below are imported on first use (PEP 562), so ``import conveyor`` is cheap and the
``conveyor`` command can catch a Ctrl-C that lands while Python is still importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.core.app import Conveyor, Schedule
    from conveyor.core.context import Context, JobCancelled
    from conveyor.core.errors import (
        BackendUnavailable,
        ConfigurationError,
        ConveyorError,
        IdempotencyKeyInFlight,
        IdempotencyKeyReused,
        InvalidArguments,
        InvalidTransition,
        JobFailed,
        JobNotFound,
        QueueNotFound,
        RegistrationError,
        UnknownTask,
        ValidationError,
    )
    from conveyor.core.handle import JobHandle
    from conveyor.core.job import Job, Status
    from conveyor.core.task import Task
    from conveyor.core.workflows import chain, group

#: public name -> the module that defines it
_HOMES = {
    "Conveyor": "conveyor.core.app", "Schedule": "conveyor.core.app",
    "Context": "conveyor.core.context", "JobCancelled": "conveyor.core.context",
    **dict.fromkeys(("BackendUnavailable", "ConfigurationError", "ConveyorError", "IdempotencyKeyInFlight",
                     "IdempotencyKeyReused", "InvalidArguments", "InvalidTransition", "JobFailed", "JobNotFound",
                     "QueueNotFound", "RegistrationError", "UnknownTask", "ValidationError"),
                    "conveyor.core.errors"),
    "JobHandle": "conveyor.core.handle",
    "Job": "conveyor.core.job", "Status": "conveyor.core.job",
    "Task": "conveyor.core.task",
    "chain": "conveyor.core.workflows", "group": "conveyor.core.workflows",
}

__all__ = [
    "BackendUnavailable",
    "ConfigurationError",
    "Context",
    "Conveyor",
    "ConveyorError",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
    "InvalidArguments",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "QueueNotFound",
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
