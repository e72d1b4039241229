"""What every benchmark no-op does, the same for every framework.

A drain job (``t == 0``) only counts itself in memory: the no-op must not cost a Redis round
trip of its own, or every framework would be measured mostly by that round trip. A daemon
thread per worker process publishes ``"<count> <first> <last>"`` (completions and their first
and last ``time.time()``) to the hash ``<done key>:drain`` under the process id, every 10 ms
while jobs complete. A latency sample (``t`` = its enqueue time) pushes ``time.time() - t``
onto ``<done key>``, on a pooled connection of the process (and, for async tasks, of the loop).

``BENCH_REDIS_URL`` and ``BENCH_DONE_KEY`` come from the environment ``compare.py`` gives
the worker.
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
FLUSH_EVERY = 0.01

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


class _Counter:
    """Completions of drain jobs in this process; ``count`` only grows."""

    def __init__(self, default_db: int) -> None:
        self.pid = os.getpid()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.default_db = default_db
        threading.Thread(target=self._publish, name="bench-recorder", daemon=True).start()

    def add(self) -> None:
        now = time.time()
        with _lock:  # thread pools complete jobs concurrently
            if not self.count:
                self.first = now
            self.count += 1
            self.last = now

    def _publish(self) -> None:
        client = redis.Redis.from_url(redis_url(self.default_db))
        published = 0
        while True:
            time.sleep(FLUSH_EVERY)
            with _lock:
                count, first, last = self.count, self.first, self.last
            if count != published:
                client.hset(f"{done_key()}:drain", str(self.pid), f"{count} {first!r} {last!r}")
                published = count


_counter: _Counter | None = None


def _count(default_db: int) -> None:
    global _counter
    if _counter is None or _counter.pid != os.getpid():  # one per process, also after a fork
        with _lock:
            if _counter is None or _counter.pid != os.getpid():
                _counter = _Counter(default_db)
    _counter.add()


def record(t: float, default_db: int) -> None:
    if not t:
        _count(default_db)
        return
    _client(default_db).rpush(done_key(), repr(time.time() - t))


async def arecord(t: float, default_db: int) -> None:
    if not t:
        _count(default_db)
        return
    loop = asyncio.get_running_loop()
    entry = _async.get(id(loop))
    if entry is None or entry[0] is not loop:
        entry = (loop, aioredis.Redis.from_url(redis_url(default_db)))
        _async[id(loop)] = entry
    await entry[1].rpush(done_key(), repr(time.time() - t))
