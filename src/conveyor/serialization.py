"""JSON only (no pickle anywhere) and RFC 3339 UTC timestamps with milliseconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON; raises ``TypeError``/``ValueError`` for anything that is not plain JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str | bytes | None) -> Any:
    """Parse JSON; ``None`` stays ``None``."""
    return None if text is None else json.loads(text)


def to_rfc3339(ts: float | None) -> str | None:
    """Epoch seconds → ``2026-11-28T10:00:00.000Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def from_rfc3339(text: str) -> float:
    """RFC 3339 (any offset; a naive time is taken as UTC) → epoch seconds."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
