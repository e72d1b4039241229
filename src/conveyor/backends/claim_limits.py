"""What the SQL engines' claims of limited jobs share, apart from how each reads its counts.

A claim reads its candidates in rounds (``round_sizes``), each leaving out the keys found at
their limit. A job with a ``limit_key`` and a ``rate_limit`` of ``count`` per ``per`` seconds
starts only while its key has fewer than ``count`` starts in the last ``per`` seconds: a claim
counts each window once (``RateWindows.counted``, read by the engine), then decides its
candidates against those counts, adding the starts it admits.
"""

from __future__ import annotations

from collections.abc import Iterator

#: Rounds of candidates one limited claim looks at (each skips the keys found full), and the most
#: rows one round reads: rounds read 4x more each, so thousands of keys at their limit ahead of a
#: job do not keep it waiting (about 18,000 looked past in all).
_LIMIT_ROUNDS = 8
_MAX_FETCH = 4096


def round_sizes(limit: int) -> Iterator[int]:
    """How many candidates each round of a claim of up to ``limit`` jobs reads. The caller stops
    early once it has ``limit`` jobs, or when a round came back short (nothing further to see)."""
    fetch = limit * 4 + 16
    for _ in range(_LIMIT_ROUNDS):
        yield min(fetch, _MAX_FETCH)
        fetch *= 4  # many keys at their limit ahead: look further in fewer rounds


class RateWindows:
    """The rate windows of the keys one claim decides on, and the starts it admits into them."""

    def __init__(self, now: float) -> None:
        self.now = now  #: when the claim's starts happen
        self._counts: dict[tuple[str, float], list[float]] = {}  #: (key, per) -> [starts, oldest]
        self.starts: list[tuple[str, float, float]] = []  #: rows for limit_starts: (key, at, until)
        #: when the first key refused for its rate may start again (None: none was)
        self.retry_at: float | None = None

    def __contains__(self, window: tuple[str, float]) -> bool:
        """Whether the window ``(key, per)`` was counted."""
        return window in self._counts

    def counted(self, key: str, per: float, starts: int, oldest: float | None) -> None:
        """What the engine counted in the window ``per`` of ``key``: ``starts`` since ``now - per``,
        the oldest at ``oldest`` (None: no start)."""
        self._counts[(key, per)] = [starts, oldest if oldest is not None else self.now]

    def take(self, key: str, count: int, per: float) -> bool:
        """Whether a job of ``key`` may start now, its window ``per`` counted; if so, the start is
        counted and kept for ``starts``, if not, ``retry_at`` says when the window has room."""
        window = self._counts[(key, per)]
        if window[0] >= count:
            at = window[1] + per
            self.retry_at = at if self.retry_at is None else min(self.retry_at, at)
            return False
        window[0] += 1
        self.starts.append((key, self.now, self.now + per))
        return True
