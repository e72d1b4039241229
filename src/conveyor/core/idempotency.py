"""When a submission that reuses an idempotency key asks for what the key's job asked for.

An idempotency key names one request: a repeat of it gets the job the first one made, and a
different request under the same key is refused (``IdempotencyKeyReused``), over HTTP (422)
and from the command line alike. (The Python API returns the key's job whatever the arguments,
``handle.created`` False: there a key may dedupe work on purpose, and ``enqueue_many`` could not
refuse one job of a batch already stored.)
"""

from __future__ import annotations

import re

from conveyor.core.errors import IdempotencyKeyReused
from conveyor.core.job import Job, Status

#: The fields that make two submissions "the same request" (times and ids are the server's own;
#: the schedule, ``delay`` or ``eta``, is compared by ``_same_schedule``).
FINGERPRINT = ("task", "queue", "args", "kwargs", "priority", "max_retries", "timeout", "depends_on",
               "metadata", "webhook")
#: An RFC 8941 String: quoted, with ``\"`` and ``\\`` the only escapes.
_SF_STRING = re.compile(r'"((?:[^"\\]|\\["\\])*)"')
_SF_ESCAPE = re.compile(r'\\(["\\])')
_CLOCK = 0.002  #: seconds: stored times round to the millisecond on some engines


def is_valid_key(key: str) -> bool:
    """An Idempotency-Key: 1–255 printable ASCII characters (the IETF draft and Stripe agree on
    this much; an HTTP header carries nothing else)."""
    return 0 < len(key) <= 255 and key.isascii() and key.isprintable()


def key_from_header(value: str) -> str | None:
    """The key an ``Idempotency-Key`` header names, or None when the header is malformed.

    The IETF draft makes the value a Structured Field String, so on the wire it is quoted
    (``"8e03978e"``, with ``\\"`` and ``\\\\`` escapes); Stripe and most clients send it bare. Both
    forms name the same key, so a client that switches form still replays its job.
    """
    if not value.startswith('"'):
        return value if is_valid_key(value) else None
    quoted = _SF_STRING.fullmatch(value)
    if quoted is None:
        return None
    key = _SF_ESCAPE.sub(r"\1", quoted[1])
    return key if is_valid_key(key) else None


def header_value(key: str) -> str:
    """``key`` as a Structured Field String, the form the IETF draft sends."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def same_request(built: Job, stored: Job) -> bool:
    """True when ``built`` (this request) asks for what ``stored`` (the key's job) asked for."""
    return all(_norm(getattr(built, name)) == _norm(getattr(stored, name)) for name in FINGERPRINT) \
        and _same_schedule(built, stored)


def check_replay(built: Job, stored: Job) -> None:
    """Raise ``IdempotencyKeyReused`` unless ``built`` repeats the request that made ``stored``."""
    if not same_request(built, stored):
        raise IdempotencyKeyReused(
            f"idempotency key {built.idempotency_key!r} was used for a different request (job {stored.id})",
            [{"pointer": "#", "detail": "differs from the request that first used this key"}],
        )


def _same_schedule(built: Job, stored: Job) -> bool:
    """Whether both asked to start at once, or at the same time: the same ``eta``, or the same
    ``delay`` (a repeat comes later, so a delay is compared from each one's ``created_at``)."""
    if stored.status is Status.RETRYING or len(stored.attempts) > 1:
        return True  # a retry moved scheduled_at: what was asked for is no longer recorded
    b, s = built.scheduled_at, stored.scheduled_at
    if b is None and s is not None and s <= built.created_at + _CLOCK:
        # an eta that has passed reads as "at once" now (the request repeated after its time):
        # it starts at once either way, so it counts as the same
        return True
    if b is None or s is None:
        return b is None and s is None
    return abs(b - s) < _CLOCK or abs((b - built.created_at) - (s - stored.created_at)) < _CLOCK


def _norm(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value
