"""The ``conveyor`` console script.

Importing the command line takes about 0.3 s; a Ctrl-C in that time would print a
KeyboardInterrupt traceback. Caught here, it exits like a Ctrl-C later does: quietly, 130.
"""

from __future__ import annotations

EXIT_INTERRUPTED = 130  #: as conveyor.cli.errors.EXIT_INTERRUPTED, which this must not import yet


def main() -> int:
    try:
        from conveyor.cli import main as cli_main
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return cli_main()
