"""The engine's URL, read: the queue prefix, and the URL aio-pika gets (with a heartbeat).

``amqp://user:password@host:5672/vhost?prefix=conveyor`` (``amqps://``); see ``backend.py``. An
option neither this engine nor aio-pika reads, a bad prefix or heartbeat is refused here, as a
``ConfigurationError``, before anything connects.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode, urlsplit, urlunsplit

from conveyor.backends import url_options
from conveyor.core.errors import ConfigurationError

#: The AMQP heartbeat timeout (s) asked for unless the URL sets ``heartbeat``. RabbitMQ closed a
#: connection silent for ~2.8 of them (14 s; 28.5 s at 10), aiormq gives one up after 3 x (it + 1)
#: s (18 s). With RabbitMQ's 60 s a host cut off silently for 30 s kept its dead connection, its
#: RabbitMQ calls stalled or failed until TCP's retransmission got through ~28 s after the heal;
#: at 10, a 15 s cut still left them failing 12 s after it (measured, tests/e2e/test_many_hosts).
HEARTBEAT = 5

#: The URL options aio-pika (``reconnect_interval`` …) and aiormq (``heartbeat``, TLS files …) read;
#: they ignore any other name, so a typo would pass unnoticed.
CLIENT_OPTIONS = ("auth", "cadata", "cafile", "capath", "certfile", "fail_fast", "happy_eyeballs_delay", "heartbeat",
                  "interleave", "keyfile", "name", "no_verify_ssl", "reconnect_interval", "timeout")


def parse_url(url: str) -> tuple[str, str]:
    """``(url without prefix, with a heartbeat, prefix)``."""
    parts = urlsplit(url)
    prefix = "conveyor"
    query: list[tuple[str, str]] = []
    for key, value in url_options(parts, "amqp"):
        if key == "prefix":
            prefix = value
        elif key in CLIENT_OPTIONS:
            query.append((key, value))
        else:
            raise ConfigurationError(f"the amqp URL: unknown option {key!r} (options: prefix, and aio-pika's: "
                                     f"{', '.join(CLIENT_OPTIONS)})")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", prefix):  # '#', '*' are routing wildcards
        raise ConfigurationError(f"invalid amqp queue prefix {prefix!r}: use letters, digits, '_', '-', '.', ':'")
    heartbeats = [value for key, value in query if key == "heartbeat"]
    if not heartbeats:
        query.append(("heartbeat", str(HEARTBEAT)))
    # aiormq takes anything else for 0, heartbeats off: a dead connection would go unnoticed
    for value in heartbeats:
        if not (value.isascii() and value.isdigit() and int(value) < 65535):  # '²' is a digit to isdigit
            raise ConfigurationError(f"invalid amqp heartbeat {value!r}: whole seconds, 0 to turn heartbeats off")
    return urlunsplit(parts._replace(query=urlencode(query))), prefix
