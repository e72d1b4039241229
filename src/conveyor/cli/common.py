"""What every command shares: ``--url`` and ``--app``, the app, and one backend per command."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

from conveyor.backends import create_backend, resolve_url
from conveyor.backends.base import Backend
from conveyor.core.app import Conveyor
from conveyor.loader import load_app


def add_common(parser: argparse.ArgumentParser) -> None:
    """Add ``--url`` and ``--app`` (accepted before or after the command name)."""
    group = parser.add_argument_group("backend")
    # SUPPRESS: a subcommand's unset option must not overwrite the same option given before it
    group.add_argument(
        "--url", default=argparse.SUPPRESS, metavar="URL",
        help="backend URL (default: $CONVEYOR_URL, else the app's, else sqlite:///conveyor.db)",
    )
    group.add_argument(
        "--app", default=argparse.SUPPRESS, metavar="MOD:ATTR", help="the Conveyor app (default: $CONVEYOR_APP)"
    )


def app_spec(args: argparse.Namespace) -> str | None:
    """``--app``, else ``CONVEYOR_APP``, else None."""
    spec: str | None = getattr(args, "app", None) or os.environ.get("CONVEYOR_APP") or None
    return spec


def load(args: argparse.Namespace) -> Conveyor:
    """The app of ``--app`` / ``CONVEYOR_APP``, using ``--url`` when given (``ConfigurationError`` if none)."""
    app = load_app(app_spec(args))
    url = getattr(args, "url", None)
    if url:
        app.url = url  # an explicit --url wins over what the app module chose
    return app


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
