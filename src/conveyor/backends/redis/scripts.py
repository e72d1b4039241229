"""The Lua scripts, from Python's side: each one's source as the server gets it, and the
arguments of the two that take many items at once (claim and finish).

A script's source is a prelude of the queue settings' defaults, ``lua/_common.lua``, then
``lua/<name>.lua``. Every script is called with KEYS[1] = ``{P}:jq`` and ARGV = the prefix,
then its own arguments (see the header of each ``.lua`` file).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from importlib import resources

from conveyor.backends.base import Outcome
from conveyor.backends.redis.records import float_arg
from conveyor.core.job import Status
from conveyor.core.queues import QueueSettings
from conveyor.serialization import dumps

SCRIPTS = ("enqueue", "claim", "heartbeat", "finish", "progress", "cancel", "requeue", "purge", "sweep",
           "get", "list", "webhooks")
_OUTCOMES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.RETRYING, Status.QUEUED})


def sources() -> dict[str, str]:
    """Each script's source, by name."""
    d = QueueSettings()
    prelude = (f"local DEF_RETENTION = {d.retention!r}\nlocal DEF_VT = {d.visibility_timeout!r}\n"
               f"local DEF_MD = {d.max_deliveries!r}\nlocal DEF_TTL = {d.result_ttl!r}\n")
    pkg = resources.files("conveyor.backends.redis") / "lua"
    common = (pkg / "_common.lua").read_text("utf-8")
    return {name: prelude + common + "\n" + (pkg / f"{name}.lua").read_text("utf-8") for name in SCRIPTS}


def claim_args(queues: Sequence[str], limit: int, worker_id: str, now: float) -> list[str]:
    """claim.lua's arguments: ``now``, how many, the worker, a new token base, the queues."""
    return [float_arg(now), str(limit), worker_id, secrets.token_hex(8), *queues]


def finish_args(outcomes: Sequence[Outcome], now: float) -> list[str]:
    """finish.lua's arguments: ``now``, then eight per outcome."""
    args: list[str] = [float_arg(now)]
    for o in outcomes:
        if o.status not in _OUTCOMES:
            raise ValueError(f"an outcome cannot set status {o.status}")
        args += [o.job_id, o.token, o.status, dumps(o.result) if o.status == Status.SUCCEEDED else "",
                 dumps(dict(o.error)) if o.error is not None else "",
                 float_arg(o.scheduled_at) if o.scheduled_at is not None else "",
                 str(o.attempt) if o.attempt is not None else "", "1" if o.uncount_delivery else "0"]
    return args
