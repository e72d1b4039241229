"""``python -m conveyor``: the command line."""

import sys

from conveyor.console import main

if __name__ == "__main__":
    sys.exit(main())
