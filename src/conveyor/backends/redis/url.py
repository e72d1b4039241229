"""The engine's URL, read: the key prefix, one server or a cluster, and the URL redis-py gets.

``redis://[user:password@]host:6379/0?prefix=conveyor`` (``rediss://``) or
``redis+cluster://...`` (``rediss+cluster://``); see ``backend.py``. A URL this engine or
redis-py cannot use is refused here, as a ``ConfigurationError``, before anything connects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from conveyor.backends import url_options
from conveyor.core.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class RedisURL:
    """What a URL of this engine says."""

    prefix: str  #: namespaces the keys of one app (default ``conveyor``)
    cluster: bool  #: a Redis Cluster (``redis+cluster://``)
    client_url: str  #: for redis-py: the scheme without ``+cluster``, the query without ``prefix``
    where: str  #: ``redis at host:port`` (or ``redis cluster at ...``), for messages
    database: int = 0  #: the database number of the URL's path


def parse_url(url: str) -> RedisURL:
    """``url`` read, or a ``ConfigurationError`` saying what is wrong with it."""
    parts = urlsplit(url)
    prefix = "conveyor"
    rest: list[tuple[str, str]] = []
    for key, value in url_options(parts, "redis"):
        if key == "prefix":
            prefix = value
        else:
            rest.append((key, value))
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", prefix):  # ASCII: a key pattern then matches it as is
        raise ConfigurationError(f"invalid redis key prefix {prefix!r}: use letters, digits, '_', '-', '.', ':'")
    scheme = parts.scheme.lower()
    cluster = scheme.endswith("+cluster")
    if cluster and parts.path not in ("", "/", "/0"):
        raise ConfigurationError(f"a redis cluster has only database 0, not {parts.path.lstrip('/')!r}")
    database = parts.path.removeprefix("/")
    if database and not (database.isascii() and database.isdigit()):  # redis-py would use db 0 silently
        raise ConfigurationError(
            f"invalid redis database {database!r} in the URL: use a number, e.g. redis://host:6379/0"
        )
    client_url = urlunsplit(parts._replace(scheme=scheme.removesuffix("+cluster"), query=urlencode(rest)))
    _check_options(client_url, cluster)
    kind = "redis cluster" if cluster else "redis"
    where = f"{kind} at {parts.hostname or 'localhost'}:{parts.port or 6379}"
    return RedisURL(prefix, cluster, client_url, where, int(database or 0))


def database_refused(url: RedisURL, exc: ResponseError) -> ConfigurationError | None:
    """The ``ConfigurationError`` for ``exc`` when it is the server's refusal of the URL's database
    (redis-py selects it on each new connection: the first command failed with a bare
    "DB index is out of range"), naming how many databases the server has when it says so on
    database 0 within a second; None for any other error. Blocks: off the event loop."""
    if "DB index is out of range" not in str(exc):
        return None
    try:
        with redis.Redis.from_url(urlunsplit(urlsplit(url.client_url)._replace(path="")), socket_timeout=1.0,
                                  socket_connect_timeout=1.0, retry=None) as client:
            count = int(cast(dict[str, str], client.config_get("databases"))["databases"])
    except (redis.RedisError, KeyError, ValueError):  # CONFIG renamed or disabled, as managed services do
        has = f"({exc})"
    else:
        has = f"(it has {count}: 0 to {count - 1})"
    return ConfigurationError(f"{url.where} has no database {url.database} {has}: use one of its databases in "
                              "the URL, e.g. redis://host:6379/0")


def _check_options(url: str, cluster: bool) -> None:
    """Refuse, as a configuration error, a URL option redis-py does not know or a value it cannot
    read (a typo would otherwise fail the first connection with a bare ``TypeError``). A
    connection (a cluster client, which connects only when first used) is built to find out,
    without connecting."""
    try:
        if cluster:
            RedisCluster.from_url(url)
        else:
            aioredis.ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as exc:
        name = re.search(r"argument '(\w+)'", str(exc))
        detail = f"unknown option {name[1]!r}" if name else str(exc).rstrip(".")
        raise ConfigurationError(f"the redis URL: {detail} (options: prefix, and redis-py's URL options)") from None
