"""What every command shares: ``--url`` and ``--app``, the app, and one backend per command; ``--api`` and
``--token`` for the commands that can work through the HTTP API instead (see ``conveyor.cli.ops``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from conveyor.backends import create_backend, resolve_url
from conveyor.backends.base import Backend
from conveyor.cli import argtypes
from conveyor.cli.errors import Stopped, UsageError
from conveyor.core.app import Conveyor
from conveyor.core.errors import ConfigurationError
from conveyor.loader import load_app

#: Said in the help of every command that takes ``--api``.
API_HELP = (
    "With --api URL (or $CONVEYOR_API) the command works through that Conveyor HTTP API instead of "
    "opening the backend: --url and --app are not needed (the server validates), and the token comes from "
    "--token or $CONVEYOR_API_TOKEN. Exit codes: 0 ok; 1 job failed or not found, API unreachable, or the "
    "token missing, unknown (HTTP 401) or without the needed scope (HTTP 403); 2 usage error (incl. an "
    "unknown task or bad arguments, HTTP 400, 413 or 422, and an --api URL that is no Conveyor API)."
)

#: The AMQP client's loggers, and the lowest level each keeps below DEBUG: aio_pika logs an INFO per
#: reconnect attempt. (The records of a lost connection that it handles itself are kept at DEBUG
#: by the RabbitMQ backend's filter, ``_ExpectedChatter``; anything else of theirs is shown.)
LIBRARY_LEVELS = {"aiormq": logging.WARNING, "aio_pika": logging.WARNING}


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (one line a record); at DEBUG the libraries log everything too."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if logging.getLevelName(level) > logging.DEBUG:
        for name, floor in LIBRARY_LEVELS.items():
            logging.getLogger(name).setLevel(max(floor, logging.getLevelName(level)))


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-level``, in either case (``debug`` was refused: uvicorn's own flag takes lowercase)."""
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="DEBUG, INFO, WARNING or ERROR, in any case (default INFO)")


def add_common(parser: argparse.ArgumentParser) -> None:
    """Add ``--url`` and ``--app`` (accepted before or after the command name)."""
    group = parser.add_argument_group("backend")
    # SUPPRESS: a subcommand's unset option must not overwrite the same option given before it
    group.add_argument(
        "--url", default=argparse.SUPPRESS, type=argtypes.backend_url, metavar="URL",
        help="backend URL (default: the app's own, given as Conveyor(URL), else $CONVEYOR_URL, "
             "else sqlite:///conveyor.db)",
    )
    group.add_argument(
        "--app", default=argparse.SUPPRESS, metavar="MOD:ATTR", help="the Conveyor app (default: $CONVEYOR_APP)"
    )


def add_api(parser: argparse.ArgumentParser) -> None:
    """Add ``--api`` and ``--token``: work through the HTTP API (``conveyor.cli.ops.Remote``)."""
    group = parser.add_argument_group("HTTP API")
    group.add_argument(
        "--api", default=argparse.SUPPRESS, type=argtypes.api_url, metavar="URL",
        help="work through the Conveyor HTTP API at URL, e.g. http://127.0.0.1:8000 (default: $CONVEYOR_API)",
    )
    group.add_argument(
        "--token", default=argparse.SUPPRESS, metavar="TOKEN",
        help="bearer token for --api (default: $CONVEYOR_API_TOKEN); a missing or refused token exits 1",
    )


def api_settings(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The API base URL (``--api``, else ``CONVEYOR_API``; None: use the backend) and its token."""
    api: str | None = getattr(args, "api", None)
    if not api and not getattr(args, "url", None):  # an explicit --url wins over $CONVEYOR_API
        api = os.environ.get("CONVEYOR_API") or None
    token: str | None = getattr(args, "token", None) or os.environ.get("CONVEYOR_API_TOKEN") or None
    if token is not None and not all("!" <= c <= "~" for c in token):  # httpx: "unexpected UnicodeEncodeError"
        raise UsageError("the token of --token / CONVEYOR_API_TOKEN must be printable ASCII without spaces")
    if api is None:
        if getattr(args, "token", None):
            raise UsageError("--token needs --api (or CONVEYOR_API)")
        return None, None
    if getattr(args, "api", None) and getattr(args, "url", None):
        raise UsageError("--api and --url exclude each other: the server chooses the backend")
    if not api.startswith(("http://", "https://")) or len(api.split("://", 1)[1].strip("/")) == 0:
        raise UsageError(f"--api must be an http:// or https:// URL, not {api!r}")
    try:  # httpx takes port 99999 and fails at the first call with an unexplained ExceptionGroup
        _ = urlsplit(api).port
    except ValueError as exc:
        raise UsageError(f"--api {api!r} is not a valid URL: {exc}") from None
    return api.rstrip("/"), token


def app_spec(args: argparse.Namespace) -> str | None:
    """``--app``, else ``CONVEYOR_APP``, else None."""
    spec: str | None = getattr(args, "app", None) or os.environ.get("CONVEYOR_APP") or None
    return spec


def load(args: argparse.Namespace) -> Conveyor:
    """The app of ``--app`` / ``CONVEYOR_APP``, using ``--url`` when given (``ConfigurationError`` if none)."""
    spec = app_spec(args)
    try:
        app = load_app(spec)
    except Stopped:
        raise
    except SystemExit as exc:  # script code run on import: it ended the command, often without a word
        raise UsageError(f"the app module of {spec!r} exited while it was imported (SystemExit {exc.code!r}): keep "
                         "script code under `if __name__ == \"__main__\":`") from None
    except ConfigurationError:
        module, _, attribute = (spec or "").partition(":")
        if module.endswith(".py") or "/" in module or os.sep in module:  # a file, as for `python app.py`
            raise UsageError(f"--app takes a module, not a file: {_module_of(module)}:{attribute} (run from the "
                             "directory the module is in, or put that directory on PYTHONPATH)") from None
        raise
    url = getattr(args, "url", None)
    if url:
        app.url = url  # an explicit --url wins over what the app module chose
    return app


def _module_of(path: str) -> str:
    """The module a file path names: ``app.py`` → ``app``, ``pkg/jobs.py`` → ``pkg.jobs``, and the file
    name alone for a path that leaves the working directory (``/srv/app.py``, ``../app.py``)."""
    path = os.path.normpath(path.removesuffix(".py"))
    if os.path.isabs(path) or path.startswith(".."):
        return os.path.basename(path)
    return path.replace(os.sep, ".").replace("/", ".")


def backend_url(args: argparse.Namespace) -> str:
    """The backend URL: ``--url``, else the app's when one is named, else ``CONVEYOR_URL`` or the default."""
    url: str | None = getattr(args, "url", None)
    if url:
        return url
    if app_spec(args):
        return load(args).url
    return resolve_url(None)


@contextlib.asynccontextmanager
async def open_backend(url: str) -> AsyncIterator[Backend]:
    """One opened backend for the duration of a command, closed at the end."""
    backend = create_backend(url)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
