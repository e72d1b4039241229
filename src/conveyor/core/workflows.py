"""Shapes of work: ``chain`` (one after another) and ``group`` (side by side), from signatures.

    transcode_all = group(transcode.s(path, 360), transcode.s(path, 480), transcode.s(path, 720))
    handles = chain(transcode_all, publish.s(path)).enqueue()

Every job of a workflow is stored in one atomic round trip, each with ``depends_on`` pointing
at the step before, so a step starts only when everything before it succeeded, and a failure
cancels what comes after (in the backend, not in anyone's memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.core.errors import ValidationError

if TYPE_CHECKING:
    from conveyor.core.app import Conveyor, Submission
    from conveyor.core.handle import JobHandle
    from conveyor.core.task import Task


@dataclass(frozen=True)
class Signature:
    """A task with its arguments and options, not yet enqueued (``task.s(...)``)."""

    task: Task
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def enqueue(self) -> JobHandle:
        return self.task.app.enqueue(self.task, self.args, self.kwargs, **self.options)


@dataclass(frozen=True)
class Group:
    """Signatures that run side by side."""

    members: tuple[Signature, ...]

    def enqueue(self) -> list[JobHandle]:
        return _enqueue([self])


@dataclass(frozen=True)
class Chain:
    """Steps (signatures or groups) that run one after another."""

    steps: tuple[Signature | Group, ...]

    def enqueue(self) -> list[JobHandle]:
        """Store every job at once; the handles in step order (a group's members in order)."""
        return _enqueue(list(self.steps))


def group(*members: Signature) -> Group:
    """Run ``members`` side by side."""
    if not members or not all(isinstance(m, Signature) for m in members):
        raise ValidationError("group() takes one or more signatures (task.s(...))")
    return Group(tuple(members))


def chain(*steps: Signature | Group) -> Chain:
    """Run ``steps`` one after another; a group step waits for all of its members."""
    if not steps or not all(isinstance(s, Signature | Group) for s in steps):
        raise ValidationError("chain() takes signatures (task.s(...)) or groups")
    return Chain(tuple(steps))


def _enqueue(steps: Sequence[Signature | Group]) -> list[JobHandle]:
    app: Conveyor = _first(steps).task.app
    return app.portal.call(app.enqueue_many_async(submissions(app, steps)))


def submissions(app: Conveyor, steps: Sequence[Signature | Group]) -> list[Submission]:
    """The submissions of ``steps``, each depending on the whole step before it."""
    from conveyor.core.ids import uuid7

    out: list[Submission] = []
    previous: list[str] = []
    for step in steps:
        members = step.members if isinstance(step, Group) else (step,)
        current = []
        for sig in members:
            job_id = uuid7()
            depends = [*previous, *sig.options.get("depends_on", ())]
            out.append((sig.task, sig.args, sig.kwargs, {**sig.options, "depends_on": depends, "_id": job_id}))
            current.append(job_id)
        previous = current
    return out


def _first(steps: Sequence[Signature | Group]) -> Signature:
    step = steps[0]
    return step.members[0] if isinstance(step, Group) else step
