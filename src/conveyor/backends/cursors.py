"""The opaque cursor between pages of ``list_jobs``, as every engine writes it.

A cursor holds where the previous page ended, in the engine's own terms, as URL-safe base64
without padding: SQLite and Redis hold the last job id (``encode_job_id``), PostgreSQL
``[created_at, id]`` as JSON (``postgres/rows.py``). Cursors handed out before stay valid, so
these formats do not change.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TypeVar

from conveyor.core.errors import ValidationError
from conveyor.core.ids import job_id_of

T = TypeVar("T")


def invalid_cursor() -> ValidationError:
    """What every engine says of a cursor it did not write."""
    return ValidationError("invalid cursor: pass the next_cursor of a previous page",
                           [{"pointer": "#/cursor", "detail": "not a cursor returned by this API"}])


def encode(raw: bytes) -> str:
    """``raw`` as a cursor."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, read: Callable[[bytes], T | None]) -> T:
    """What ``read`` makes of the bytes ``encode`` wrote into ``cursor``; ``invalid_cursor()``
    when the cursor is not base64, or ``read`` returns None or raises ``ValueError``,
    ``TypeError`` or ``OverflowError`` (a number too big for a float)."""
    try:
        last = read(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, OverflowError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        last = None
    if last is None:
        raise invalid_cursor()
    return last


def encode_job_id(last_id: str) -> str:
    """The cursor of the page after the job ``last_id`` (the id itself)."""
    return encode(last_id.encode())


def decode_job_id(cursor: str) -> str:
    """The last job id of the previous page (what ``encode_job_id`` wrote)."""
    return decode(cursor, lambda raw: job_id_of(raw.decode()))
