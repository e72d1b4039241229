"""``conveyor up``'s supervisor with real child processes: what it restarts and what it doesn't."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from conveyor.supervisor import Child, Supervisor


def test_a_child_exiting_2__the_others_are_stopped__the_supervisor_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 is a configuration error (a missing vhost the server learned of late): restarting
    the child forever, every 30 s, would only repeat its line."""
    stopped = tmp_path / "stopped"
    sleeper = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(stopped)!r}, 'w').close(), sys.exit(0)))\n"
        "time.sleep(60)\n"
    )
    failing = Child("server", [sys.executable, "-c", "import time, sys; time.sleep(0.3); sys.exit(2)"])
    worker = Child("worker 1", [sys.executable, "-c", sleeper])
    began = time.monotonic()
    # bound: a supervisor that restarts the child forever is stopped as by Ctrl-C (then exits 0)
    ctrl_c = threading.Timer(8, os.kill, (os.getpid(), signal.SIGTERM))
    ctrl_c.start()
    try:
        code = Supervisor([failing, worker], stop_timeout=10).run()
    finally:
        ctrl_c.cancel()
    assert code == 2
    assert time.monotonic() - began < 10
    assert failing.exits == [2] and failing.restarts == 0
    assert stopped.exists(), "the other child was not stopped with SIGTERM"
    err = capsys.readouterr().err
    assert "server exited with code 2, a configuration error" in err


def test_a_child_crashing_with_another_code__is_restarted() -> None:
    crashing = Child("worker 1", [sys.executable, "-c", "import sys; sys.exit(1)"])
    supervisor = Supervisor([crashing], stop_timeout=5)
    deadline = time.monotonic() + 5
    while len(crashing.exits) < 2 and time.monotonic() < deadline:
        supervisor._tick(time.monotonic())
        time.sleep(0.05)
    supervisor._stop_all()
    assert crashing.exits[:2] == [1, 1], "a crashed child was not restarted"
    assert supervisor.exit_code == 0
