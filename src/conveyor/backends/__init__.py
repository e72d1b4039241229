"""Engines behind the seam in ``base.py``, chosen by one URL."""

from __future__ import annotations

import os
from urllib.parse import SplitResult, parse_qsl, urlsplit

from conveyor.backends.base import Backend
from conveyor.core.errors import ConfigurationError
from conveyor.serialization import holds_lone_surrogate

DEFAULT_URL = "sqlite:///conveyor.db"


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``CONVEYOR_URL``, else the embedded default."""
    return url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL


def create_backend(url: str) -> Backend:
    """A not-yet-opened backend for ``url``; a ``ConfigurationError`` for an unknown scheme or a bad port."""
    parts = urlsplit(url)
    _check_port(parts)
    scheme = parts.scheme.lower()
    if scheme != "sqlite" and holds_lone_surrogate(url):  # a file name may be any bytes
        # bytes that are not UTF-8 (CONVEYOR_URL as os.environ decodes them): psycopg ended in a
        # bare UnicodeEncodeError, redis said "unreachable"
        raise ConfigurationError("the backend URL holds bytes that are not UTF-8: percent-encode them (%FF)")
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteBackend

        return SQLiteBackend(url)
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from conveyor.backends.redis import RedisBackend  # type: ignore[import-not-found,unused-ignore]

        return RedisBackend(url)  # type: ignore[no-any-return,unused-ignore]
    if scheme in ("postgresql", "postgres"):
        from conveyor.backends.postgres import PostgresBackend  # type: ignore[import-not-found,unused-ignore]

        return PostgresBackend(url)  # type: ignore[no-any-return,unused-ignore]
    if scheme in ("amqp", "amqps"):
        from conveyor.backends.amqp import AMQPBackend  # type: ignore[import-not-found,unused-ignore]

        store = os.environ.get("CONVEYOR_STORE_URL")
        if not store:
            raise ConfigurationError(
                "an amqp:// URL needs CONVEYOR_STORE_URL for job records (sqlite, redis or postgresql)"
            )
        return AMQPBackend(url, create_backend(store))  # type: ignore[no-any-return,unused-ignore]
    raise ConfigurationError(
        f"unsupported backend URL {url!r}: use sqlite://, redis://, redis+cluster://, postgresql:// or amqp://"
    )


def _check_port(parts: SplitResult) -> None:
    """Refuse a port that is not a number here: the engines' clients would fail later with a bare ValueError."""
    try:
        _ = parts.port  # urllib parses the port only when asked
    except ValueError:
        host = parts.netloc.rpartition("@")[2]  # never echo the password
        port = host.rpartition("]")[2].partition(":")[2]
        raise ConfigurationError(
            f"invalid port {port!r} in the {parts.scheme}:// URL: a port is a number from 1 to 65535"
        ) from None


def url_options(parts: SplitResult, engine: str) -> list[tuple[str, str]]:
    """The query options of an engine's URL, in order. An option without a value or given twice
    is refused: the engines' clients read ``?schema=`` or ``?socket_timeout=`` as "not given" and
    use the default, and a repeated one as its last value, without a word."""
    options = parse_qsl(parts.query, keep_blank_values=True)
    seen: set[str] = set()
    for key, value in options:
        if not value:
            raise ConfigurationError(f"the {engine} URL: option {key!r} has no value (give one, or leave it out "
                                     "for the default)")
        if key in seen:
            raise ConfigurationError(f"the {engine} URL: option {key!r} is given twice")
        seen.add(key)
    return options
