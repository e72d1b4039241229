"""A connection of a blocking client kept out of its pool, for a caller that comes one at a time.

A sync enqueue loop and an idle worker's wait each keep one (``Kept``) and send on it directly,
skipping the pool and redis-py's wrapping of each call; anyone else goes through the pool. A
forked child forgets every kept connection of its parent (they are the parent's sockets).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import redis
import redis.cluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class Kept:
    """One connection of a blocking client, kept out of its pool for one caller at a time.

    Taking a pooled connection and giving it back, with redis-py's wrapping of each call, costs
    about a third of a round trip: a one-at-a-time caller (a sync enqueue loop, an idle
    worker's wait) skips that. A concurrent caller, or a call whose connection failed, goes
    through the pool instead, with its retries.
    """

    def __init__(self) -> None:
        self._forget()
        _KEPT.add(self)

    def _forget(self) -> None:
        """Drop the connection without closing it (after a fork it is the parent's socket:
        a child writing on it would get the parent's replies, and the parent the child's)."""
        self._lock = threading.Lock()
        self._conn: Any = None  #: a redis-py ``Connection`` (untyped), made on first use

    def send(self, client: redis.Redis | redis.cluster.RedisCluster,
             commands: Sequence[tuple[Any, ...]]) -> list[Any] | None:
        """The replies of ``commands``, sent in one write; None if the connection is taken or
        failed, or ``client`` is a cluster's (then the caller goes through ``client``). A
        command's error is raised once every reply was read."""
        if not isinstance(client, redis.Redis) or not self._lock.acquire(blocking=False):
            return None
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = client.connection_pool.get_connection()
            replies: list[Any] = []
            try:
                conn.send_packed_command(conn.pack_commands(commands))
                for _ in commands:
                    try:
                        replies.append(conn.read_response())
                    except ResponseError as exc:  # its whole reply was read
                        replies.append(exc)
            except RedisTimeoutError:
                conn.disconnect()  # a reply may still come: this connection is done
                raise  # no second wait through the pool: a silent engine fails the call once
            except (RedisConnectionError, OSError):
                conn.disconnect()  # it reconnects on its next use
                return None
            except BaseException:
                conn.disconnect()  # interrupted: a reply may be left unread on it
                raise
        finally:
            self._lock.release()
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def forget(self) -> None:
        """Drop the connection (its client's pool closes it)."""
        with self._lock:
            self._conn = None


#: every ``Kept`` of this process: a forked child forgets their connections (``Kept._forget``)
_KEPT: weakref.WeakSet[Kept] = weakref.WeakSet()


def _forget_kept() -> None:
    for kept in list(_KEPT):
        kept._forget()


os.register_at_fork(after_in_child=_forget_kept)
