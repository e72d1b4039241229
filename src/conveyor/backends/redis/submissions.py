"""Enqueues as enqueue.lua takes them: one caller's jobs, several callers' sent in one call.

A ``Submission`` is one caller's jobs with their flat ARGV (``payload``). Concurrent callers share
a script call: async ones through ``Coalescer`` and ``sent_together_async``, threads through
``GroupCommit`` and ``sent_together``; each gets its own part of the reply (``shares``), and when
one caller's unknown parent makes the script refuse the whole call (it writes nothing), each
caller is sent again alone, so the mistake fails only its own caller.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.backends.base import Enqueued
from conveyor.backends.redis.records import float_arg, job_from_hash, record_fields
from conveyor.core.errors import ValidationError
from conveyor.core.job import Job, Status
from conveyor.serialization import loads


@dataclass(slots=True)
class Submission:
    """One caller's enqueue, possibly coalesced with others into one script call."""

    jobs: Sequence[Job]
    payload: list[str]  #: the jobs' flat ARGV strings (see enqueue.lua)
    now: float


def payload(jobs: Sequence[Job], now: float) -> list[str]:
    """The flat ARGV strings of ``jobs`` (see enqueue.lua)."""
    out: list[str] = []
    for job in jobs:
        created = float_arg(job.created_at or now)
        scheduled = job.scheduled_at is not None and (job.status == Status.SCHEDULED or
                                                       job.scheduled_at > (job.created_at or now))
        fields = record_fields(job)
        out += [job.id, job.queue, job.task, str(int(job.priority)), created,
                float_arg(job.scheduled_at) if scheduled else "", job.idempotency_key or "",  # type: ignore[arg-type]
                str(len(job.depends_on)), *job.depends_on, str(len(fields)), *fields]
    return out


def joined(subs: Sequence[Submission]) -> tuple[int, list[str], float]:
    """The enqueue script's job count, payload and ``now`` for several submissions at once."""
    return (sum(len(sub.jobs) for sub in subs), [item for sub in subs for item in sub.payload],
            max(sub.now for sub in subs))


def checked(sub: Submission, reply: list[Any]) -> Enqueued:
    """``sub``'s jobs as the script stored them, or the ``ValidationError`` of an unknown parent."""
    if reply and reply[0] == "!":
        # the same pointer and words as the other engines: the job's index in a batch
        j, i, parent = reply[1:]
        where = f"#/jobs/{j}/depends_on/{i}" if len(sub.jobs) > 1 else f"#/depends_on/{i}"
        detail = f"depends_on: no job has id {parent!r}"
        raise ValidationError(detail, [{"pointer": where, "detail": detail}])
    return stored(sub, reply)


def shares(subs: Sequence[Submission], items: list[Any]) -> list[Enqueued] | None:
    """Each submission's part of one script call's reply over all of them; None when the
    call refused them all for one caller's unknown parent (then each goes alone)."""
    if items and items[0] == "!":
        return None
    out = []
    for sub in subs:
        mine, items = items[:len(sub.jobs)], items[len(sub.jobs):]
        out.append(stored(sub, mine))
    return out


def stored(sub: Submission, items: list[str]) -> Enqueued:
    """``sub``'s jobs as stored, from the script's reply item for each."""
    out: Enqueued = []
    for job, item in zip(sub.jobs, items, strict=True):
        if item[0] == "=":  # an existing job: its record
            out.append((job_from_hash(json.loads(item[1:])), False))
            continue
        created = job.created_at or sub.now
        updated = job.updated_at or created
        if item[0] == "{":  # created cancelled (a parent failed): the error
            out.append((job.replace(status=Status.CANCELLED, revision=1, created_at=created,
                                    error=loads(item), finished_at=sub.now, updated_at=sub.now), True))
        elif job.status == item and job.revision == 1 and job.created_at == created \
                and job.updated_at == updated:
            out.append((job, True))  # already as stored
        else:
            out.append((job.replace(status=Status(item), revision=1, created_at=created, updated_at=updated),
                        True))
    return out


def sent_together(subs: Sequence[Submission],
                  script: Callable[[int, list[str], float], list[Any]]) -> list[Enqueued | BaseException]:
    """The submissions of concurrent sync callers, in one call of ``script`` (count, payload,
    now → the enqueue script's reply): each caller's result, or the exception to raise in it."""
    if len(subs) == 1:
        sub = subs[0]
        return [checked(sub, script(len(sub.jobs), sub.payload, sub.now))]
    parts = shares(subs, script(*joined(subs)))
    if parts is not None:
        return list(parts)
    out: list[Enqueued | BaseException] = []
    for sub in subs:  # someone's unknown parent (nothing was written): each caller alone
        try:
            out.append(checked(sub, script(len(sub.jobs), sub.payload, sub.now)))
        except Exception as exc:
            out.append(exc)
    return out


async def sent_together_async(subs: Sequence[Submission],
                              script: Callable[[int, list[str], float], Awaitable[list[Any]]]
                              ) -> list[Enqueued | BaseException]:
    """``sent_together`` for concurrent async callers (``Coalescer``): ``script`` is awaited."""
    if len(subs) == 1:
        sub = subs[0]
        return [checked(sub, await script(len(sub.jobs), sub.payload, sub.now))]
    parts = shares(subs, await script(*joined(subs)))
    if parts is not None:
        return list(parts)
    out: list[Enqueued | BaseException] = []
    for sub in subs:  # someone's unknown parent (nothing was written): each caller alone
        try:
            out.append(checked(sub, await script(len(sub.jobs), sub.payload, sub.now)))
        except Exception as exc:
            out.append(exc)
    return out
