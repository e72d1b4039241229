"""Argument types shared by the commands: each refuses bad input with one clear line (exit 2)."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from conveyor.core.checks import check_queue_name
from conveyor.core.errors import RegistrationError, ValidationError
from conveyor.core.task import check_task_name
from conveyor.serialization import holds_lone_surrogate


def integer(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """An integer from ``low`` to ``high`` (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"{low} to {high}"
            raise argparse.ArgumentTypeError(f"{what or 'must be'} {bounds}: {text!r}")
        return value

    return parse


#: The most jobs one worker runs at once: its heartbeat stores the number (20 digits ended the worker
#: in "unexpected OverflowError" on SQLite; PostgreSQL's integer column ends at 2**31 - 1).
MAX_CONCURRENCY = 10_000
#: ``--concurrency`` of ``worker`` and ``up``.
concurrency = integer(1, MAX_CONCURRENCY)


def seconds(positive: bool = False) -> Callable[[str], float]:
    """A number of seconds: 0 or more, or more than 0 when ``positive``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value):  # "must be more than 0 seconds" said of inf (1e309 too) was no help
            raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
        if not (value > 0 if positive else value >= 0):
            raise argparse.ArgumentTypeError(f"must be {'more than' if positive else 'at least'} 0 seconds: {text!r}")
        return value

    return parse


def address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` to listen on; HOST 127.0.0.1 unless given (IPv6 in brackets: ``[::]:9101``)."""
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if colon else "127.0.0.1"
    if not host:
        raise argparse.ArgumentTypeError(f"no host before the port: {text!r}")
    return host, integer(1, 65535, "the port must be")(port)


def backend_url(text: str) -> str:
    """A backend URL that is not empty: an empty ``--url`` (``--url "$UNSET_VAR"``) is a mistake,
    where leaving the option out means $CONVEYOR_URL, else the default file."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "empty URL: give a backend URL (e.g. sqlite:///conveyor.db), or leave --url out to use $CONVEYOR_URL")
    if holds_lone_surrogate(text) and not text.lower().startswith("sqlite:"):  # a file name may be any bytes
        # argv bytes that are not UTF-8: psycopg ended in "unexpected UnicodeEncodeError", redis said "unreachable"
        raise argparse.ArgumentTypeError("the URL holds bytes that are not UTF-8: percent-encode them (%FF)")
    return text


def api_url(text: str) -> str:
    """An ``--api`` URL that is not empty: ``--api "$UNSET_VAR"`` worked on $CONVEYOR_API, else on the
    backend, where leaving the option out means $CONVEYOR_API (the URL itself is checked with it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "empty URL: give the server's base URL (e.g. http://127.0.0.1:8000), or leave --api out to use "
            "$CONVEYOR_API")
    return text


def host(text: str) -> str:
    """A host to listen on that is not empty: ``--host ''`` listened on every interface, IPv4 and IPv6
    (a token set made that pass unnoticed); the default is 127.0.0.1, every interface is 0.0.0.0."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty host: give an address (0.0.0.0: every interface), or leave --host "
                                         "out for 127.0.0.1")
    return text


def queue_name(text: str) -> str:
    """A valid queue name (the rule of ``check_queue_name``, which the API applies too)."""
    try:
        return check_queue_name(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"invalid queue name {text!r}: {exc}") from None


def task_name(text: str) -> str:
    """A name a task can have (``check_task_name``): ``jobs --task ''`` listed "no jobs" (exit 0), and
    argv bytes that are not UTF-8 ended in "unexpected UnicodeEncodeError" from the database."""
    try:
        return check_task_name(text)
    except RegistrationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: What a ``next_cursor`` is made of (URL-safe base64, as ``conveyor.backends.cursors`` writes it),
#: up to the length ``GET /v1/jobs`` takes.
_CURSOR = re.compile(r"[A-Za-z0-9_-]{0,500}")


def cursor(text: str) -> str:
    """A page cursor, or '' for the first page; anything else is no ``next_cursor`` of ours (through
    ``--api`` a non-ASCII one said "the server did not answer like a Conveyor API", exit 1)."""
    if _CURSOR.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"invalid cursor {text[:60]!r}: pass the next_cursor of a previous page")
    return text


def queue_names(text: str) -> list[str]:
    """A comma-separated list of valid queue names (spaces around a name are ignored); an empty
    one (``--queues "$A,$B"`` with B unset) is refused, as it is for every option that takes one."""
    return [queue_name(n.strip()) for n in text.split(",")]
