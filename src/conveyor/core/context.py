"""The Context: what a running task knows about its job and how it talks back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from conveyor.core.errors import ValidationError
from conveyor.core.job import Job, storable_text


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class Context:
    """First parameter of every task."""

    def __init__(
        self,
        job: Job,
        report_progress: Callable[[dict[str, Any]], None] | None = None,
        parent_results: Mapping[str, Any] | None = None,
    ) -> None:
        #: The job being run (as it was when the attempt started).
        self.job = job
        #: Results of the ``depends_on`` parents, keyed by job id (and by name, for
        #: ``depends_on={"name": job}``).
        self.parent_results: Mapping[str, Any] = parent_results or {}
        self._report = report_progress
        # a plain flag, set once by the worker and read by the task's thread (no lock needed:
        # one attribute store is atomic, and nobody waits on it)
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        """True once a cancel of this job was requested (or the worker abandoned it)."""
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raise ``JobCancelled`` if a cancel was requested: call it between steps of long work."""
        if self._cancelled:
            raise JobCancelled(f"job {self.job.id} was cancelled")

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress: ``fraction`` in [0, 1] and an optional message."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
            raise ValidationError(f"progress fraction must be a number in [0, 1], got {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise ValidationError(f"progress message must be a string or None, got {type(message).__name__}")
        if self._report is not None:
            text = None if message is None else storable_text(message)
            value: dict[str, Any] = {"fraction": float(fraction), "message": text}
            self._report(value)

    def request_cancel(self) -> None:
        """Used by the worker: mark the job as cancelled for the task to notice."""
        self._cancelled = True
