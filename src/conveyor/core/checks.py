"""A submission's options, checked: each wrong one is refused with a ``ValidationError`` whose
JSON Pointer names it in the submission (``#/priority``, ``#/depends_on/2``), as HTTP shows it.

``Conveyor.build_job`` checks a job's options here (its arguments are the task's to check);
``order_by_dependencies`` orders a batch so that parents are stored before their children.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from conveyor.core.errors import ValidationError
from conveyor.core.idempotency import is_valid_key
from conveyor.core.ids import job_id_of
from conveyor.core.job import Job
from conveyor.core.queues import QUEUE_NAME_RULE, is_queue_name
from conveyor.serialization import (
    NUL_REFUSED,
    SURROGATE_REFUSED,
    dumps,
    from_rfc3339,
    holds_lone_surrogate,
    holds_nul,
    keys_are_text,
    not_json,
)


def order_by_dependencies(jobs: Sequence[Job]) -> list[Job]:
    """Parents before children within one batch; a cycle is refused."""
    by_id = {j.id: j for j in jobs}
    done: set[str] = set()
    visiting: set[str] = set()
    out: list[Job] = []

    def visit(job: Job) -> None:
        if job.id in done:
            return
        if job.id in visiting:
            raise ValidationError(
                "depends_on forms a cycle", [{"pointer": "#/depends_on", "detail": f"cycle through job {job.id}"}]
            )
        visiting.add(job.id)
        for parent in job.depends_on:
            if parent in by_id:
                visit(by_id[parent])
        visiting.discard(job.id)
        done.add(job.id)
        out.append(job)

    for job in jobs:
        visit(job)
    return out


#: The furthest ahead a job may be held (``delay``, ``eta``): the longest queue retention, 14 days.
MAX_DELAY = 14 * 86400


_OFFSET = re.compile(r"(?:[zZ]|[+-]\d\d:?\d\d)$")


def when(delay: float | None, eta: datetime | float | str | None, now: float) -> float | None:
    """When the job may start (``delay`` seconds from ``now``, or ``eta``); None: at once."""
    if delay is not None and eta is not None:
        raise invalid("#/eta", "give delay or eta, not both", "delay and eta both given")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY:
            raise invalid(
                "#/delay",
                "delay must be a number of seconds from 0 to 1209600 (14 days)",
                "must be 0 to 1209600 seconds",
            )
        return now + delay if delay > 0 else None
    if eta is None:
        return None
    try:
        if isinstance(eta, datetime):
            when = eta.timestamp()  # a naive datetime is local time, as Python reads it everywhere
        elif isinstance(eta, str):
            if not _OFFSET.search(eta.strip()):  # RFC 3339 requires one; guessing UTC moved jobs by hours
                raise invalid("#/eta", "eta must be an RFC 3339 time with its UTC offset (Z or +hh:mm)",
                               "no UTC offset")
            when = from_rfc3339(eta)
        elif isinstance(eta, int | float) and not isinstance(eta, bool):
            when = float(eta)
        else:
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise invalid("#/eta", "eta must be an RFC 3339 time", "not an RFC 3339 time") from None
    if not math.isfinite(when) or when > now + MAX_DELAY:  # as far ahead as a delay may reach
        raise invalid("#/eta", "eta must be a time at most 14 days from now", "more than 14 days ahead")
    return when if when > now else None


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value``, an integer from ``low`` to ``high`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(
            f"#/{name}", f"{name} must be an integer from {low} to {high}", f"must be an integer from {low} to {high}"
        )
    return value


def check_timeout(value: Any) -> float | None:
    """A time limit in seconds: above 0, at most 7 days; None: none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 7 * 86400:
        raise invalid(
            "#/timeout",
            "timeout must be a positive number of seconds (at most 7 days)",
            "must be > 0 and ≤ 604800 seconds",
        )
    return float(value)


def check_queue_name(name: Any) -> str:
    """A queue name by ``QUEUE_NAME_RULE``."""
    if not is_queue_name(name):
        raise invalid("#/queue", QUEUE_NAME_RULE, "invalid queue name")
    return str(name)


def check_key(key: Any) -> str | None:
    """An idempotency key: 1–255 printable ASCII characters, as the HTTP header takes it."""
    if key is None:
        return None
    if not isinstance(key, str) or not is_valid_key(key):  # one rule, as HTTP's header takes it
        raise invalid("#/key", "an idempotency key is 1–255 printable ASCII characters",
                       "1–255 printable ASCII characters")
    return key


def check_metadata(metadata: Any) -> dict[str, Any]:
    """A JSON object of at most 64 KiB, without NUL or lone surrogates (no engine stores them alike)."""
    if metadata is None:
        return {}
    try:
        text = dumps(metadata) if isinstance(metadata, Mapping) else ""
        if len(text) > 64 * 1024 or not text or not keys_are_text(dict(metadata)):
            raise TypeError
    except (TypeError, ValueError, RecursionError):
        with contextlib.suppress(RecursionError):
            found = not_json(dict(metadata), "#/metadata") if isinstance(metadata, Mapping) else None
            if found is not None:
                pointer, why = found
                raise invalid(pointer, f"metadata{pointer[len('#/metadata'):]}: {why}", why) from None
        raise invalid(
            "#/metadata", "metadata must be a JSON object of at most 64 KiB", "must be a JSON object ≤ 64 KiB"
        ) from None
    if "\\u0000" in text and holds_nul(metadata):
        raise invalid("#/metadata", f"metadata: {NUL_REFUSED}", NUL_REFUSED)
    if not text.isascii() and holds_lone_surrogate(metadata):
        raise invalid("#/metadata", f"metadata: {SURROGATE_REFUSED}", SURROGATE_REFUSED)
    if PARENT_NAMES in metadata:  # the worker reads it as depends_on's names: another value broke the job
        raise invalid(f"#/metadata/{PARENT_NAMES}", f"metadata key {PARENT_NAMES!r} is Conveyor's (depends_on names)",
                      "reserved for depends_on names")
    return dict(metadata)


def check_webhook(url: Any) -> str | None:
    """An http(s) URL, on a host of ``CONVEYOR_WEBHOOK_ALLOWED_HOSTS`` when that is set."""
    if url is None:
        return None
    if isinstance(url, str) and any(c <= " " or c == "\x7f" for c in url):
        # urlsplit silently drops tabs and newlines, which the HTTP client then refuses to send
        raise invalid("#/webhook", "webhook must be an http(s) URL", "spaces and control characters are not allowed")
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        hostname = parts.hostname if parts is not None else None  # parses the host: "[::1" raises
        _ = parts.port if parts is not None else None  # and the port: ":99999" raises
    except ValueError:
        parts = hostname = None
    if parts is None or parts.scheme not in ("http", "https") or not hostname or len(url) > 2048:
        raise invalid("#/webhook", "webhook must be an http(s) URL", "not an http(s) URL")
    if not hostname.isascii():  # the sender's IDNA 2008 would refuse some such names only when sending
        raise invalid("#/webhook", "webhook must be an http(s) URL", "give a non-ASCII host in its xn-- form")
    allowed = [h.strip().lower() for h in os.environ.get("CONVEYOR_WEBHOOK_ALLOWED_HOSTS", "").split(",") if h.strip()]
    if allowed and hostname.lower() not in allowed:
        raise invalid(
            "#/webhook", f"webhook host {hostname!r} is not in CONVEYOR_WEBHOOK_ALLOWED_HOSTS", "host not allowed"
        )
    return str(url)


#: Metadata key recording the names given to parents (``depends_on={"video": job}``).
PARENT_NAMES = "conveyor.parents"


def with_parent_names(metadata: dict[str, Any], depends_on: Any) -> dict[str, Any]:
    """Remember ``depends_on={"name": job}`` names, so the child reads parents' results by name."""
    if not isinstance(depends_on, Mapping):
        return metadata
    if not all(isinstance(k, str) and k for k in depends_on):
        raise invalid("#/depends_on", "depends_on names must be non-empty strings", "names must be strings")
    refs = {name: getattr(job, "id", job) for name, job in depends_on.items()}
    # ids as dependency_ids reads them (any case: the stored id is lower case); a bad one is its to refuse
    return {**metadata, PARENT_NAMES: {name: job_id_of(ref) or ref for name, ref in refs.items()}}


def dependency_ids(depends_on: Iterable[Any] | None) -> list[str]:
    """The parents' ids (handles or id strings), each once, in order."""
    if depends_on is None:
        return []
    if isinstance(depends_on, str) or not isinstance(depends_on, Iterable):
        raise invalid("#/depends_on", "depends_on must be a list of job ids", "must be a list of job ids")
    ids: list[str] = []
    for i, item in enumerate(depends_on):
        value = job_id_of(getattr(item, "id", item))
        if value is None:
            raise invalid(f"#/depends_on/{i}", f"depends_on[{i}] is not a job id", "not a job id")
        if value not in ids:
            ids.append(value)
    return ids


def invalid(pointer: str, message: str, detail: str) -> ValidationError:
    """A ``ValidationError`` pointing into the submission (JSON Pointer, as RFC 9457 shows)."""
    return ValidationError(message, [{"pointer": pointer, "detail": detail}])
