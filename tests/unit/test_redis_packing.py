"""Commands packed by hiredis directly are the bytes redis-py itself would send."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio as aioredis

from conveyor.backends.redis.packing import with_hiredis_packing

COMMANDS = [
    ("EVALSHA", "a" * 40, 1, "{p}:jq", "p", "1796587873.3969057", "1", "naïve ☕"),
    ("BLPOP", "{p}:q/default/wake", 0.25),
    ("ZADD", "k", 1e20, "m", 1.5e-7, "n", -3, "o"),
    ("SET", b"raw\x00bytes", memoryview(b"view")),  # a memoryview: redis-py packs it
    ("SCRIPT LOAD", "return 1"),  # a two-word name: redis-py splits it
    (b"GET", "key"),  # a bytes name: redis-py packs it
]


@pytest.mark.parametrize("client_class", [redis.Redis, aioredis.Redis], ids=["sync", "asyncio"])
def test_packed_commands__the_bytes_redis_py_would_send(client_class: type) -> None:
    plain = client_class.from_url("redis://127.0.0.1:6379/0").connection_pool
    fast = with_hiredis_packing(client_class.from_url("redis://127.0.0.1:6379/0")).connection_pool
    ours, theirs = fast.make_connection(), plain.make_connection()  # not connected: nothing is sent
    assert type(ours) is not type(theirs)
    for command in COMMANDS:
        assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command)), command
    assert b"".join(ours.pack_commands(COMMANDS)) == b"".join(theirs.pack_commands(COMMANDS))


def test_packed_commands__a_bool_is_refused_as_redis_py_refuses_it() -> None:
    conn = with_hiredis_packing(redis.Redis.from_url("redis://127.0.0.1:6379/0")).connection_pool.make_connection()
    with pytest.raises(redis.DataError):
        conn.pack_command("SET", "k", True)
