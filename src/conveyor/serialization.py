"""JSON only (no pickle anywhere) and RFC 3339 UTC timestamps with milliseconds."""

from __future__ import annotations

import functools
import json
import math
import time
from datetime import UTC, datetime
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON; raises ``TypeError``/``ValueError`` for anything that is not plain JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def keys_are_text(value: Any) -> bool:
    """Whether every mapping in ``value`` has only text keys. ``json.dumps`` turns ``{1: "a"}``
    into ``{"1": "a"}`` without a word: the task would get other data than it was given."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    return False
                if isinstance(inner, dict | list | tuple):
                    stack.append(inner)
        elif isinstance(item, list | tuple):
            stack.extend(inner for inner in item if isinstance(inner, dict | list | tuple))
    return True


def not_json(value: Any, pointer: str = "#") -> tuple[str, str] | None:
    """The JSON Pointer of the first part of ``value`` that JSON cannot carry, and why (None when
    all of it can; a key that is not text is ``keys_are_text``'s business)."""
    if isinstance(value, float) and not math.isfinite(value):
        return pointer, f"{value} is not a JSON number"
    if isinstance(value, str | int | float | bool | None):
        return None
    if isinstance(value, dict):
        items: Any = ((str(k).replace("~", "~0").replace("/", "~1"), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return pointer, f"{type(value).__name__} is not JSON"
    for key, item in items:
        found = not_json(item, f"{pointer}/{key}")
        if found is not None:
            return found
    return None


#: Why a string holding U+0000 is refused: PostgreSQL cannot store it in JSON, so no engine takes
#: it (an app moves between engines as it is).
NUL_REFUSED = "a string holds U+0000 (NUL), which PostgreSQL cannot store in JSON: send binary data as base64"


def holds_nul(value: Any) -> bool:
    """Whether a string or an object key in ``value`` holds U+0000. Callers first look for
    ``\\u0000`` in the JSON text, which is how ``json.dumps`` writes it: the walk is for the rare hit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and "\x00" in key:
                    return True
                stack.append(inner)
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


#: Why text with a lone UTF-16 surrogate is refused where it enters (arguments, metadata).
SURROGATE_REFUSED = ("a string holds a lone UTF-16 surrogate (such as \\ud800), which is not a character: "
                     "text must be valid Unicode")


def holds_lone_surrogate(value: Any) -> bool:
    """Whether a string or an object key in ``value`` holds a lone surrogate (``os.fsdecode`` of a
    non-UTF-8 name, a ``\\ud800`` escape in a request): no engine can store it as UTF-8. Callers
    first look for ``\\ud`` in the text ``json.dumps`` wrote (it escapes every surrogate)."""
    try:
        dumps(value).encode()
    except UnicodeEncodeError:
        return True
    return False


def loads(text: str | bytes | None) -> Any:
    """Parse JSON; ``None`` stays ``None``."""
    return None if text is None else json.loads(text)


def epoch_ms(ts: float) -> int:
    """Epoch seconds → epoch milliseconds, the very ones ``to_rfc3339`` shows (truncated)."""
    seconds = math.floor(ts)
    micros = round((ts - seconds) * 1_000_000)  # as datetime rounds: to the nearest microsecond
    return seconds * 1000 + micros // 1000


def to_rfc3339(ts: float | None) -> str | None:
    """Epoch seconds → ``2026-11-28T10:00:00.000Z`` (truncated to the millisecond)."""
    if ts is None:
        return None
    seconds, millis = divmod(epoch_ms(ts), 1000)
    return f"{_whole_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _whole_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def from_rfc3339(text: str) -> float:
    """RFC 3339 (any offset; a naive time is taken as UTC) → epoch seconds."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
