"""Job ids: UUIDv7, time-ordered so that ids sort by creation."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """A new UUIDv7 string; monotonic within this process even inside one millisecond."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # 12-bit sequence exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        seq = _counter
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"  # formatted by hand: a third of the cost of str(uuid.UUID(int=value))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_uuid(text: str) -> bool:
    """True when ``text`` is a canonical UUID string (either case)."""
    return job_id_of(text) is not None


def job_id_of(text: object) -> str | None:
    """``text`` as a stored job id (canonical, lowercase: ids are stored that way; UUIDs are
    case-insensitive on input), or None when it is not a UUID in its canonical form."""
    if not isinstance(text, str) or len(text) != 36:
        return None
    lowered = text.lower()
    try:
        return lowered if str(uuid.UUID(lowered)) == lowered else None
    except ValueError:
        return None
