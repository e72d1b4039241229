"""``Idempotency-Key`` on ``POST /v1/jobs``: replay (200), mismatch (422), in flight (409).

The key is stored with the job (``idempotency_key``; the backend returns the stored job for a
known key, atomically), so keys live as long as the job record and hold across servers. The
in-flight check is per process: a second request with a key this process is still serving
gets 409 instead of waiting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from conveyor.core.errors import IdempotencyKeyInFlight


class InFlight:
    """Keys of requests this process is serving right now."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    @contextlib.contextmanager
    def hold(self, key: str | None) -> Iterator[None]:
        if key is None:
            yield
            return
        if key in self._keys:
            raise IdempotencyKeyInFlight(f"a request with idempotency key {key!r} is still in flight")
        self._keys.add(key)
        try:
            yield
        finally:
            self._keys.discard(key)
