"""The one thing every benchmark no-op does: push ``time.time() - t`` onto the done list.

``BENCH_REDIS_URL`` and ``BENCH_DONE_KEY`` come from the environment ``compare.py`` gives
the worker; each process (and, for async tasks, each event loop) keeps one pooled client.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import redis
import redis.asyncio as aioredis

DONE_KEY_DEFAULT = "bench:done"

_lock = threading.Lock()
_sync: tuple[int, redis.Redis] | None = None
_async: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}


def redis_url(default_db: int) -> str:
    return os.environ.get("BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{default_db}")


def done_key() -> str:
    return os.environ.get("BENCH_DONE_KEY", DONE_KEY_DEFAULT)


def _client(default_db: int) -> redis.Redis:
    global _sync
    pid = os.getpid()
    if _sync is None or _sync[0] != pid:  # after a fork (Celery prefork) open a new pool
        with _lock:
            if _sync is None or _sync[0] != pid:
                _sync = (pid, redis.Redis.from_url(redis_url(default_db)))
    return _sync[1]


def record(t: float, default_db: int) -> None:
    _client(default_db).rpush(done_key(), repr(time.time() - t))


async def arecord(t: float, default_db: int) -> None:
    loop = asyncio.get_running_loop()
    entry = _async.get(id(loop))
    if entry is None or entry[0] is not loop:
        entry = (loop, aioredis.Redis.from_url(redis_url(default_db)))
        _async[id(loop)] = entry
    await entry[1].rpush(done_key(), repr(time.time() - t))
