"""Commands packed by hiredis as they are, skipping redis-py's Python encoder of each argument.

redis-py runs its encoder on each argument before packing: ≈ 0.4 µs each, 8 µs of a sync
enqueue's round trip and ≈ a sixth of a worker's loop in a drain of no-op jobs. The connections
``with_hiredis_packing`` gives a client hand a command of str, int, float and bytes arguments to
hiredis directly; anything else (a bool, a memoryview, "SCRIPT LOAD") redis-py packs, as it would.
Without hiredis (``hiredis_pack`` None), clients keep redis-py's packing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aioredis

hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # installed with the redis extra; redis-py's own parsing and packing are its fallback
    from hiredis import pack_command as hiredis_pack
except ImportError:  # pragma: no cover
    hiredis_pack = None


class HiredisPacking:
    """A redis-py connection (sync or asyncio) that hands a command of str, int, float and bytes
    arguments to hiredis as it is (mixed in before redis-py's connection class)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if hiredis_pack is not None:
            try:
                if " " not in args[0]:
                    return [hiredis_pack(args)]
            except TypeError:  # a bytes name, or an argument hiredis does not take
                pass
        return cast(list[bytes], super().pack_command(*args))  # type: ignore[misc]

    def pack_commands(self, commands: Sequence[Sequence[Any]]) -> list[bytes]:
        return [b"".join([chunk for command in commands for chunk in self.pack_command(*command)])]


_PACKING_CLASSES: dict[type, type] = {}
_C = TypeVar("_C", redis.Redis, aioredis.Redis)


def with_hiredis_packing(client: _C) -> _C:
    """``client``, its pool making ``HiredisPacking`` connections of the class it chose (TCP,
    TLS or Unix socket). (A cluster's nodes keep redis-py's packing.)"""
    if hiredis_pack is not None:
        pool = client.connection_pool
        base = pool.connection_class
        if base not in _PACKING_CLASSES:
            _PACKING_CLASSES[base] = type(base.__name__, (HiredisPacking, base), {})
        pool.connection_class = _PACKING_CLASSES[base]
    return client
