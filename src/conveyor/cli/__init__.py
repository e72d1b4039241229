"""The ``conveyor`` command line.

One module per command group registers its subcommands with ``register(subparsers)`` and
binds each to a handler with ``parser.set_defaults(func=handler)``, where ``handler(args)``
returns the exit code. Errors are raised, not printed: ``main`` turns every one into a single
line on stderr and the exit code of ``conveyor.cli.errors.EXIT_CODES`` (set ``CONVEYOR_DEBUG=1``
to see the traceback of an unexpected error instead). ``--url`` and ``--app`` come from
``conveyor.cli.common.add_common``; ``conveyor.cli.serve``, when present, adds ``server`` and ``up``.
The job and queue commands also take ``--api URL`` / ``--token`` (``add_api``) and do their work
through ``conveyor.cli.ops.open_operations``: the backend directly, or the HTTP API via
``conveyor.client`` — the one place where the two differ.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from conveyor.cli import jobs, queues, schedules, worker
from conveyor.cli.common import add_api, add_common
from conveyor.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, exit_code, one_line

PROG = "conveyor"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``conveyor submit: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)


def usage_error(prog: str, message: str) -> NoReturn:
    """Exit 2 with one line naming the help to read: ``conveyor jobs: error: ... (see 'conveyor jobs --help')``."""
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())} (see '{prog} --help')\n")
    sys.exit(EXIT_USAGE)


def build_parser() -> ArgumentParser:
    """The full parser: every command, with ``server`` and ``up`` when ``conveyor.cli.serve`` exists."""
    parser = ArgumentParser(prog=PROG, description="Conveyor: background jobs that are never lost.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    add_common(parser)
    add_api(parser)  # before the command too, as --url: it read `conveyor --api URL jobs` as the command "URL"
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for group in (worker, jobs, queues, schedules):
        group.register(subparsers)
    # ``server`` and ``up`` live in their own module, added when present
    if importlib.util.find_spec("conveyor.cli.serve") is not None:
        importlib.import_module("conveyor.cli.serve").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. Never lets a traceback reach the user."""
    try:
        args = parse(argv)
        with _own_logs_only(), _stdout_replacing():
            code: int = args.func(args)
        return code
    except SystemExit as exc:  # argparse (--help, usage errors) and handlers that exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `conveyor jobs --json | head -1`: the reader has had enough
        _quiet_stdout()
        return EXIT_FAILED
    except Exception as exc:
        if os.environ.get("CONVEYOR_DEBUG"):
            raise
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return exit_code(exc)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line. An unknown option is reported by its command, whose help lists the options."""
    args, extras = build_parser().parse_known_args(argv)
    if extras:  # argparse would report it as the top-level parser's and point to 'conveyor --help'
        usage_error(f"{PROG} {args.command}", f"unrecognized arguments: {' '.join(extras)}")
    if args.command in BACKEND_ONLY and {"api", "token"} & vars(args).keys():  # given before the command
        usage_error(f"{PROG} {args.command}", f"{args.command} takes no --api or --token: it opens the backend "
                                              "(--url) itself")
    return args


#: The commands that do not work through the HTTP API.
BACKEND_ONLY = frozenset({"worker", "server", "up"})


@contextlib.contextmanager
def _own_logs_only() -> Iterator[None]:
    """While no logging is configured, records reach Python's last-resort handler (stderr). Let only
    Conveyor's own through: a library's (aiormq's "error when creating transport: ...") would come
    on top of the one-line error that says the same. ``worker`` and ``server`` configure logging,
    so they keep every library's logs."""
    last = logging.lastResort
    if last is None:
        yield
        return
    only = logging.Filter("conveyor")
    last.addFilter(only)
    try:
        yield
    finally:
        last.removeFilter(only)


@contextlib.contextmanager
def _stdout_replacing() -> Iterator[None]:
    """Tables and panels on a stdout that cannot encode every character (``PYTHONIOENCODING=ascii``,
    a cp1252 console) show "?" for the rest, instead of ending in "unexpected UnicodeEncodeError"
    (our own "—" did, whatever the job held). ``--json`` escapes instead (``render.print_json``)."""
    stdout = sys.stdout
    if not isinstance(stdout, io.TextIOWrapper) or stdout.errors != "strict":
        yield
        return
    stdout.reconfigure(errors="replace")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # it flushes first: a closed pipe raises again
            stdout.reconfigure(errors="strict")


def _quiet_stdout() -> None:
    """Send what is left for a closed stdout to /dev/null: the flush at exit would raise again, and
    print "Exception ignored ... BrokenPipeError" (as tables end already, through rich)."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: no file descriptor (a test's capture)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _version() -> str:
    from conveyor import __version__

    return __version__


__all__ = ["build_parser", "main"]
