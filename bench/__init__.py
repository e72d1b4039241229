"""Benchmarks: ``bench.bench`` (the engines), ``bench.http`` (the API), ``bench.compare`` (the peers);
``bench.chaos``: a kill -9 soak that checks nothing is lost."""

from __future__ import annotations

import os
from pathlib import Path

import conveyor

ROOT = Path(__file__).resolve().parents[1]

#: PYTHONPATH for the workers and servers a benchmark starts: this checkout (the ``bench``
#: package) and the ``conveyor`` this process imported, so that both sides run the same code
#: (a worktree's, say, beside an editable install of another)
CHILD_PYTHONPATH = os.pathsep.join([str(Path(conveyor.__file__).resolve().parents[1]), str(ROOT)])
