"""Retry backoff: exponential with full jitter (pure functions)."""

from __future__ import annotations

import random

BASE = 1.0  #: seconds before the first retry, before jitter
CAP = 3600.0  #: the longest wait between two attempts, in seconds


def backoff(attempt: int, base: float = BASE, cap: float = CAP, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): U(0, min(cap, base·2^(attempt-1)))."""
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    return (rng or random).uniform(0, ceiling)
