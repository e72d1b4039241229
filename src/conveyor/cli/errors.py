"""The one table from Conveyor's error tree to exit codes, and the one-line message users see."""

from __future__ import annotations

import os
import re
import traceback

from conveyor.core.errors import (
    BackendUnavailable,
    ConfigurationError,
    ConveyorError,
    IdempotencyKeyInFlight,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    RegistrationError,
    ValidationError,
)

EXIT_OK = 0
#: The job failed, was not found, or the backend is unreachable.
EXIT_FAILED = 1
#: Unknown command or option, unknown task, bad arguments, bad ``--app``.
EXIT_USAGE = 2
#: Interrupted by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class UsageError(ConveyorError):
    """The command line is invalid."""


class Stopped(SystemExit):
    """A stop signal arrived before the command began its work (while the app loads): exit 0.
    Its own class, so that loading the app tells it from an app module that exits on import."""

    def __init__(self) -> None:
        super().__init__(EXIT_OK)


#: Error class → exit code; the first entry the error is an instance of wins (subclasses first).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (ValidationError, EXIT_USAGE),  # UnknownTask, InvalidArguments, IdempotencyKeyReused
    (ConfigurationError, EXIT_USAGE),  # bad --app, bad --url, missing CONVEYOR_STORE_URL
    (RegistrationError, EXIT_USAGE),  # the app's own task definitions are invalid
    (JobNotFound, EXIT_FAILED),
    (JobFailed, EXIT_FAILED),
    (BackendUnavailable, EXIT_FAILED),
    (InvalidTransition, EXIT_FAILED),
    (IdempotencyKeyInFlight, EXIT_FAILED),
    (TimeoutError, EXIT_FAILED),  # submit --wait / watch --timeout ran out
    (ConveyorError, EXIT_FAILED),
)


def exit_code(exc: BaseException) -> int:
    """The process exit code for ``exc`` (1 for anything the table does not name)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_FAILED


#: Characters a terminal acts on rather than shows: C0 and C1 controls (ESC starts sequences that
#: clear the screen, set the title, write the clipboard) and the bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, keep: str = "") -> str:
    """``text`` safe to print on a terminal: each control character (but those in ``keep``) as its
    ``\\x1b`` escape. Jobs' messages, errors and tracebacks are the task's text, and may carry
    someone else's (a file name, a reply): printed raw, they could rewrite the screen."""
    return _CONTROL.sub(lambda m: m[0] if m[0] in keep else m[0].encode("unicode_escape").decode(), text)


def one_line(exc: BaseException) -> str:
    """The error as one line for stderr: Conveyor's own message, else the type and message."""
    if isinstance(exc, ConveyorError | TimeoutError):
        text = str(exc) or (type(exc).__doc__ or type(exc).__name__).strip()
    else:  # a bug (ours or a library's): where it was raised, so that a report can be acted on
        text = f"unexpected {type(exc).__name__}: {exc}" if str(exc) else f"unexpected {type(exc).__name__}"
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            where = frames[-1]
            path = "/".join(where.filename.split(os.sep)[-2:])
            text += f" (raised at {path}:{where.lineno} in {where.name}; CONVEYOR_DEBUG=1 shows the traceback)"
    return printable(" ".join(text.split()))  # newlines inside a message would break the one-line promise
