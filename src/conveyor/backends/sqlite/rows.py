"""Values to and from their columns: the JSON of structured fields, and rows back into objects.

Structured fields (args, kwargs, progress, result, error, metadata, the timeline) are stored as
JSON text in ``conveyor.serialization``'s format; ``job_from_row`` and ``settings_from_row`` turn
a row of ``statements.COLS`` or ``statements.SETTINGS_COLS`` back into a ``Job`` or a
``QueueSettings``. Every claim and read decodes whole rows, so this is hot code: the codecs are
built once and the common empty values skip the decoder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from conveyor.core.job import Job, Status
from conveyor.core.queues import QueueSettings

#: ``conveyor.serialization``'s JSON format (compact, no NaN, non-JSON refused), with the
#: encoder built once rather than per value: enqueue and claim encode and decode every field.
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_decode = json.JSONDecoder().decode


def loads(text: str | None) -> Any:
    """A stored JSON column (``NULL`` → ``None``); the empty object and list skip the decoder."""
    if text is None:
        return None
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return _decode(text)


#: A stored status string → its ``Status``.
STATUS: dict[str, Status] = {s.value: s for s in Status}


def job_from_row(r: Sequence[Any]) -> Job:
    """A ``Job`` from a row of ``COLS``."""
    return Job(
        id=r[0], task=r[1], queue=r[2], status=STATUS[r[3]], args=loads(r[4]), kwargs=loads(r[5]),
        priority=r[6], progress=loads(r[7]), result=loads(r[8]), error=loads(r[9]), attempt=r[10],
        max_retries=r[11], timeout=r[12], depends_on=loads(r[13]), idempotency_key=r[14],
        metadata=loads(r[15]), webhook=r[16], created_at=r[17], scheduled_at=r[18], started_at=r[19],
        finished_at=r[20], updated_at=r[21], deliveries=r[22], cancel_requested=bool(r[23]),
        revision=r[24], worker_id=r[25], lease_token=r[26], lease_expires_at=r[27], limit_key=r[28],
        concurrency_limit=r[29], rate_limit=(r[30], r[31]) if r[30] is not None else None,
        attempts=loads(r[32]) or (),
    )


def settings_from_row(r: Sequence[Any]) -> QueueSettings:
    """A ``QueueSettings`` from a row of ``SETTINGS_COLS``."""
    return QueueSettings(retention=r[1], visibility_timeout=r[2], max_deliveries=r[3], result_ttl=r[4],
                         paused=bool(r[5]))


def json_or_empty(value: Any, empty: str) -> str:
    """``value`` as JSON, or the ``empty`` literal for an empty (or absent) one."""
    return dumps(value) if value else empty
