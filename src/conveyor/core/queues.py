"""Queue settings, like SQS: retention, visibility timeout, delivery limit, pause."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from conveyor.core.errors import ValidationError

_QUEUE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
QUEUE_NAME_RULE = "queue names are 1–100 ASCII letters, digits, '-', '_', '.' or ':'"


def is_queue_name(name: object) -> bool:
    """Whether ``name`` may name a queue (it goes into keys, schemas and URL paths as it is)."""
    return isinstance(name, str) and _valid_queue_name(name)


@functools.lru_cache(maxsize=1024)
def _valid_queue_name(name: str) -> bool:
    return 0 < len(name) <= 100 and set(name) <= _QUEUE_CHARS


MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The stored settings of one queue. Durations are float seconds."""

    #: A job not started within this long after it became ready is ``expired`` (60 s – 14 days).
    retention: float = 4 * DAY
    #: A lease lasts this long unless the worker's heartbeat extends it (1 s – 12 h).
    visibility_timeout: float = 30.0
    #: A job delivered this many times without finishing ends ``failed``.
    max_deliveries: int = 10
    #: Finished job records are deleted this long after they finished.
    result_ttl: float = 7 * DAY
    #: A paused queue keeps accepting jobs but hands none to workers.
    paused: bool = False

    def replace(self, **changes: Any) -> QueueSettings:
        """A validated copy with ``changes`` applied (``None`` values are ignored)."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValidationError(f"unknown queue setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **given).validated()

    def validated(self) -> QueueSettings:
        """Self, or a ``ValidationError`` naming the setting out of range."""
        checks = [
            ("retention", self.retention, MINUTE, 14 * DAY),
            ("visibility_timeout", self.visibility_timeout, 1.0, 12 * HOUR),
            ("max_deliveries", self.max_deliveries, 1, 1000),
            ("result_ttl", self.result_ttl, 0.0, 365 * DAY),
        ]
        errors = []
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                detail = f"{name} must be a number from {low:,.0f} to {high:,.0f}"
                errors.append({"pointer": f"#/{name}", "detail": detail})
        if isinstance(self.max_deliveries, float):
            errors.append({"pointer": "#/max_deliveries", "detail": "max_deliveries must be a whole number"})
        if not isinstance(self.paused, bool):
            errors.append({"pointer": "#/paused", "detail": "paused must be true or false"})
        if errors:
            raise ValidationError("; ".join(e["detail"] for e in errors), errors)
        return self

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
