"""Reaching the server: what a ``postgresql://`` URL asks for, and which errors mean it is unreachable.

:func:`parse_url` takes Conveyor's own parameters (``schema``, ``pool_min``, ``pool_max``,
``pool_timeout``) out of the URL, adds libpq's keepalive options unless the URL sets them, and
lets libpq check the rest, so that a typo is a configuration error rather than a failed
connection; an option without a value, or given twice, is refused too (``url_options``).
:data:`UNAVAILABLE` lists the errors the engine reports as ``BackendUnavailable``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import PoolTimeout

from conveyor.backends import url_options
from conveyor.core.errors import ConfigurationError

AConn = psycopg.AsyncConnection[Any]

#: Errors that mean the server cannot be reached (or the pool has no connection for us).
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
_OWN_PARAMS = ("schema", "pool_min", "pool_max", "pool_timeout")
#: libpq options every connection gets unless the URL sets them: a dead peer (a silent partition,
#: a frozen host: no reset) is noticed in about 11 s, as by the Redis engine, instead of a request
#: in flight waiting out TCP's retransmission backoff (libpq's defaults: keepalive after 2 h, no
#: user timeout) until the worker's stall watchdog exits it.
_KEEPALIVE = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "3",
              **({"tcp_user_timeout": "11000"} if psycopg.pq.version() >= 120000 else {})}


@dataclasses.dataclass(frozen=True)
class ServerUrl:
    """What a PostgreSQL URL says, split into Conveyor's settings and libpq's connection string."""

    schema: str  #: the PostgreSQL schema that holds Conveyor's tables
    conninfo: str  #: the URL for libpq: without Conveyor's parameters, with the keepalive defaults
    where: str  #: ``host:port/db``, for error messages
    min_size: int  #: connections the pool keeps open
    max_size: int  #: connections the pool opens at most
    timeout: float  #: seconds to wait for a pooled connection
    probe_timeout: int  #: seconds one direct connection attempt may take (libpq's ``connect_timeout``)


def parse_url(url: str, *, min_size: int, max_size: int, timeout: float) -> ServerUrl:
    """Read ``url``; its ``pool_*`` parameters override the sizes and timeout given."""
    parts = urlsplit(url)
    params = dict(url_options(parts, "PostgreSQL"))
    own = {k: params.pop(k) for k in _OWN_PARAMS if k in params}
    schema = own.get("schema", "conveyor")
    if not _SCHEMA_RE.match(schema):
        raise ConfigurationError(f"invalid PostgreSQL schema name {schema!r} in the URL: "
                                 "use letters, digits and underscores")
    min_size = _whole(own, "pool_min", min_size, 0)
    max_size = _whole(own, "pool_max", max(min_size, max_size), max(min_size, 1))
    timeout = _seconds(own, "pool_timeout", timeout)
    params.update({k: v for k, v in _KEEPALIVE.items() if k not in params})
    scheme = "postgresql"
    conninfo = urlunsplit((scheme, parts.netloc, parts.path, urlencode(params), parts.fragment))
    try:  # libpq's own check of its options: a typo is a configuration error, not a failed connection
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"the PostgreSQL URL: {exc} (options: schema, pool_min, pool_max, "
                                 "pool_timeout, and libpq's)") from None
    return ServerUrl(schema=schema, conninfo=conninfo,
                     where=f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}",
                     min_size=min_size, max_size=max_size, timeout=timeout,
                     probe_timeout=max(2, _whole(params, "connect_timeout", 2)))


def _whole(options: dict[str, str], name: str, default: int, low: int | None = None) -> int:
    """Option ``name`` as a whole number (``default`` when absent), at least ``low``."""
    text = options.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,9}", text) or (low is not None and int(text) < low):
        least = "" if low is None else f", at least {low}"
        raise ConfigurationError(f"invalid {name} {text!r} in the PostgreSQL URL: a whole number{least}")
    return int(text)


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    """Option ``name`` as a number of seconds more than 0 (``default`` when absent)."""
    text = options.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:  # nan too
        raise ConfigurationError(f"invalid {name} {text!r} in the PostgreSQL URL: seconds, more than 0")
    return value
