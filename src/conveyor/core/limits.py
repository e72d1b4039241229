"""Global limits of a task: how many of its jobs run at once and how many start per window.

The limits are stored on each job (``limit_key``, ``concurrency_limit``, ``rate_limit``) and
enforced by the engines inside ``claim``, atomically, across every worker. Pure; no engine here.
"""

from __future__ import annotations

import inspect
import re
import reprlib
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.core.errors import InvalidArguments, RegistrationError

#: Seconds per unit of a rate limit: ``"10/s"``, ``"100/m"``, ``"1000/h"``.
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")
#: Longest limit key stored (a resolved key longer than this is refused at enqueue).
MAX_KEY = 200
#: The largest ``concurrency_limit``, and the largest count of a ``rate_limit`` (per second,
#: minute or hour): beyond any deployment, and within what every engine stores (PostgreSQL's
#: ``integer`` column ends at 2^31 - 1, SQLite's at 2^63 - 1, Redis's Lua reads doubles).
MAX_LIMIT = 1_000_000


def parse_rate(text: str, where: str) -> tuple[int, float]:
    """``"10/s"`` → ``(10, 1.0)``; ``RegistrationError`` for anything else."""
    match = _RATE.match(text) if isinstance(text, str) else None
    digits = match.group(1).lstrip("0") if match is not None else ""
    count = int(digits) if 0 < len(digits) <= len(str(MAX_LIMIT)) else 0  # int() refuses 4,301 digits
    if match is None or not 1 <= count <= MAX_LIMIT:
        raise RegistrationError(
            f"{where}: rate_limit must look like '10/s', '100/m' or '1000/h' (a count from 1 to {MAX_LIMIT} per "
            f"second, minute or hour), not {reprlib.repr(text)}"
        )
    return count, _UNITS[match.group(2)]


@dataclass(frozen=True, slots=True)
class Limits:
    """A task's global limits, checked at registration."""

    concurrency: int | None = None  #: jobs of one key running at once, across all workers
    rate: tuple[int, float] | None = None  #: (count, per_seconds) starts of one key
    #: A format string over the task's parameter names (``"{customer_id}"``), or a callable
    #: taking the task's arguments and returning a str; ``None``: the task name.
    key: str | Callable[..., str] | None = None

    @property
    def active(self) -> bool:
        return self.concurrency is not None or self.rate is not None

    @classmethod
    def build(
        cls,
        where: str,
        signature: inspect.Signature,
        concurrency_limit: int | None,
        rate_limit: str | None,
        limit_key: str | Callable[..., str] | None,
    ) -> Limits:
        """Validate the ``@app.task`` limit options against the task's parameters."""
        if concurrency_limit is not None and (isinstance(concurrency_limit, bool) or not isinstance(
                concurrency_limit, int) or not 1 <= concurrency_limit <= MAX_LIMIT):
            raise RegistrationError(f"{where}: concurrency_limit must be an integer from 1 to {MAX_LIMIT}, "
                                    f"not {reprlib.repr(concurrency_limit)}")
        rate = parse_rate(rate_limit, where) if rate_limit is not None else None
        if limit_key is not None:
            if concurrency_limit is None and rate is None:
                raise RegistrationError(f"{where}: limit_key needs concurrency_limit or rate_limit")
            if isinstance(limit_key, str):
                _check_format(where, limit_key, signature)
            elif not callable(limit_key):
                raise RegistrationError(f"{where}: limit_key must be a format string or a callable")
        return cls(concurrency_limit, rate, limit_key)

    def resolve(self, task: str, signature: inspect.Signature, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The limit key of one job's (already validated) arguments."""
        if self.key is None:
            return task
        try:
            if callable(self.key):
                key = self.key(*args, **kwargs)
            else:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                key = self.key.format(**bound.arguments)
        except Exception as exc:
            raise InvalidArguments(
                f"{task}: cannot compute the limit key: {exc}", [{"pointer": "#/kwargs", "detail": f"limit_key: {exc}"}]
            ) from None
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
            raise InvalidArguments(
                f"{task}: the limit key must be a str of 1–{MAX_KEY} characters",
                [{"pointer": "#/kwargs", "detail": f"limit_key: not a str of 1–{MAX_KEY} characters"}],
            )
        return key


def _check_format(where: str, text: str, signature: inspect.Signature) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise RegistrationError(f"{where}: limit_key {text!r} is not a format string: {exc}") from None
    names = set(signature.parameters)
    for field in fields:
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root not in names:
            raise RegistrationError(
                f"{where}: limit_key {text!r} names {{{field}}}, which is not a parameter of the task "
                f"(parameters: {', '.join(sorted(names)) or 'none'})"
            )
