"""The one error tree of Conveyor.

    ConveyorError
    ├── ConfigurationError          bad URL, bad settings, missing store for AMQP
    ├── BackendUnavailable          the engine cannot be reached (HTTP 503, exit 1)
    ├── ValidationError             a caller's mistake (HTTP 422, exit 2)
    │   ├── UnknownTask
    │   ├── InvalidArguments        carries ``errors``: [{"pointer", "detail"}]
    │   └── IdempotencyKeyReused
    ├── JobNotFound                 (HTTP 404, exit 1)
    ├── InvalidTransition           e.g. retry of a running job (HTTP 409)
    ├── IdempotencyKeyInFlight      (HTTP 409)
    ├── RegistrationError           a task definition that cannot be accepted
    └── JobFailed                   ``job.wait()`` of a job that did not succeed

Each exception's docstring is its default message.
"""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Conveyor failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigurationError(ConveyorError):
    """The configuration is invalid."""


class BackendUnavailable(ConveyorError):
    """The backend cannot be reached; try again later."""


class ValidationError(ConveyorError):
    """The request is invalid."""

    def __init__(self, message: str | None = None, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        #: JSON-Pointer-addressed details: ``[{"pointer": "#/kwargs/height", "detail": "..."}]``.
        self.errors = errors or []


class UnknownTask(ValidationError):
    """No task is registered under this name."""


class InvalidArguments(ValidationError):
    """The arguments do not match the task's signature."""


class IdempotencyKeyReused(ValidationError):
    """This idempotency key was already used for a different request."""


class JobNotFound(ConveyorError):
    """No job has this id."""


class QueueNotFound(JobNotFound):
    """No queue has this name: the app names none such, and the backend has no jobs or settings
    for it. (A kind of "not found": 404 over HTTP, exit 1 on the command line.)"""


class InvalidTransition(ConveyorError):
    """The job's status does not allow this operation."""


class IdempotencyKeyInFlight(ConveyorError):
    """A request with this idempotency key is still being processed."""


class RegistrationError(ConveyorError):
    """The task definition is invalid."""


class JobFailed(ConveyorError):
    """The job did not succeed."""

    def __init__(
        self, message: str | None = None, error: dict[str, Any] | None = None, status: str | None = None
    ) -> None:
        super().__init__(message)
        #: The job's ``error`` object (``type``, ``message``, ``traceback``), if any.
        self.error = error
        #: The job's terminal status.
        self.status = status
