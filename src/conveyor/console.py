"""The ``conveyor`` console script.

Importing the command line takes about 0.4 s. A Ctrl-C in that time would print a
KeyboardInterrupt traceback: caught here, it exits like a Ctrl-C later does, quietly, 130. A
SIGTERM in that time would kill a worker, server or ``up`` by the signal (143) though nothing ran
yet: it is noted, and once the command is known it ends those cleanly (exit 0, as a stop while
the app loads does) and any other command by the signal, as it would have been.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

EXIT_INTERRUPTED = 130  #: as conveyor.cli.errors.EXIT_INTERRUPTED, which this must not import yet
#: Commands that exit 0 when stopped before they started anything.
STOPPABLE = frozenset({"worker", "server", "up"})

_terminated: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _terminated.append(signum)


def main() -> int:
    previous = signal.signal(signal.SIGTERM, _note)
    try:
        from conveyor.cli import main as cli_main
        from conveyor.cli import parse
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)  # each command installs its own
    if _terminated and previous is not signal.SIG_IGN:
        try:
            command = parse(None).command
        except SystemExit:  # a usage error, already said
            command = None
        if command not in STOPPABLE:
            os.kill(os.getpid(), signal.SIGTERM)  # the default action again: die by the signal
        return 0
    return cli_main()
