"""A lost RabbitMQ connection, recognised: in the errors of the calls it cuts short
(``dropped``), and in the AMQP client's log records of it, which Conveyor says once in its own
words and so keeps below an incident's level (``EXPECTED_CHATTER``)."""

from __future__ import annotations

import asyncio
import logging

import aio_pika.exceptions

#: Errors that mean "RabbitMQ cannot be used right now".
DOWN: tuple[type[BaseException], ...] = (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError)


def reasonless(exc: BaseException) -> bool:
    """aiormq's word for "the connection or channel closed" when it has no reason to give: it
    fails the calls in flight with the bare ``Exception`` class (``FutureStore.reject_all(None)``),
    or with ``CancelledError`` (``close()``'s default), whatever the call was."""
    return type(exc) in (Exception, asyncio.CancelledError)


def dropped(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a RabbitMQ call, means the connection went away under it. A
    ``CancelledError`` counts only if the task running the call is not itself being cancelled."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return reasonless(exc) and (task is None or task.cancelling() == 0)
    return isinstance(exc, DOWN) or reasonless(exc)


class _ExpectedChatter(logging.Filter):
    """Keeps the AMQP client's records of a lost connection that it handles itself, and that
    Conveyor says once in its own words ("connection lost; reconnecting", "reconnected"), below
    the level of an incident: shown at DEBUG when the logger logs DEBUG, else dropped.

    - aio_pika's robust channel tries to reopen itself as the connection under it closes, before
      the robust connection notices (a race in aio_pika): the attempt fails on the dead
      connection, and aio_pika logs an ERROR "Callback <OneShotCallback: cb=<bound method
      RobustChannel._on_close ...>> error: RuntimeError: <Connection ...> closed" (or
      ``ChannelInvalidStateError: No active transport in channel``). The robust connection
      reopens every channel when it reconnects: nothing is lost.
    - aiormq logs a traceback ("Cancelling cause reader exited abnormally") as the reset is read,
      and an ERROR ("error when creating transport") per refused attempt, which aio_pika's own
      WARNING per attempt says too.
    - aio_pika's WARNING per attempt ("Connection attempt to ... failed: <why>. Reconnecting
      after N seconds.") passes once per reason until a reconnect (``reconnected``): it says why
      RabbitMQ cannot be reached, and whether that changes, without a line every few seconds.
    - aiormq's WARNING "Consumer 'ctag…' cancelled by the broker" for a consumer of Conveyor's
      (``cancel_said_for``), which Conveyor says naming the queue (``AMQPBackend._on_cancelled``).

    Any other record of these loggers passes unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._attempts_said: set[str] = set()
        #: Tags of Conveyor's live consumers (they are unique: a random part per consumer).
        self.cancel_said_for: set[str] = set()

    def reconnected(self) -> None:
        """A connection is back: the next outage's attempts are said again."""
        self._attempts_said.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aio_pika.robust_connection" and str(record.msg).startswith("Connection attempt to "):
            text = record.getMessage()
            if text not in self._attempts_said:
                self._attempts_said.add(text)
                return True
        elif not self._expected(record):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info = record.exc_text = None  # the traceback is the expected reset
        return True

    def _expected(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return False
        if record.name == "aio_pika.tools":
            text = record.getMessage()
            return text.startswith("Callback ") and "RobustChannel._on_close" in text and (
                text.endswith(" closed") or text.endswith("No active transport in channel"))
        if record.name == "aiormq.connection":
            return record.msg in ("Cancelling cause reader exited abnormally", "error when creating transport: %r")
        if record.name == "aiormq.channel" and record.msg == "Consumer %r cancelled by the broker on %r":
            return isinstance(record.args, tuple) and bool(record.args) and record.args[0] in self.cancel_said_for
        return False


#: Installed once per process on the loggers it knows (``AMQPBackend.open``).
EXPECTED_CHATTER = _ExpectedChatter()


def quiet_expected_chatter() -> None:
    """Install ``EXPECTED_CHATTER`` on the loggers it knows; once, however often this runs."""
    for name in ("aio_pika.tools", "aio_pika.robust_connection", "aiormq.connection", "aiormq.channel"):
        logger = logging.getLogger(name)
        if EXPECTED_CHATTER not in logger.filters:
            logger.addFilter(EXPECTED_CHATTER)
