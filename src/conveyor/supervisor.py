"""``conveyor up``'s supervisor: child processes kept running, stopped together.

Each child runs in its own session, so a terminal's Ctrl-C reaches only the supervisor, which
forwards one SIGTERM to every child (workers then drain within their grace). SIGTERM and SIGHUP
(the terminal closed) stop it the same way. A child that exits while the supervisor is not
stopping is restarted after a backoff (0.5 s doubling to 30 s; reset once a child has run for a
minute), except one that exits 2: a configuration error (it said which, in one line) that no
restart can mend, so every child is stopped and the supervisor exits 2. A second signal forwards
a second SIGTERM (workers hand their jobs back at once); children still alive after
``stop_timeout`` are killed. On Linux a supervisor that dies without a
stop (kill -9, OOM) still stops its children: the kernel sends each one SIGTERM
(``PR_SET_PDEATHSIG``), so none is left running without a parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

BACKOFF_START, BACKOFF_CAP, HEALTHY_AFTER = 0.5, 30.0, 60.0
#: A child's exit code for a configuration error (the CLI's usage code): not restarted.
EXIT_CONFIGURATION = 2
#: Each stops the supervisor and its children: SIGHUP is a closed terminal (children, in sessions
#: of their own, never see it), not a reason to leave them running.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: The children's metrics files go to ``<tmp>/conveyor-metrics-<supervisor pid>-<random>``.
METRICS_DIR_PREFIX = "conveyor-metrics-"


@dataclass
class Child:
    """One supervised process: its name, its command line, and how it has been doing."""

    name: str
    argv: Sequence[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Starts ``children``, restarts those that exit, stops them all on SIGINT/SIGTERM/SIGHUP (exit 0)
    or once one exits with a configuration error (exit 2)."""

    def __init__(self, children: Sequence[Child], env: Mapping[str, str] | None = None,
                 stop_timeout: float = 40.0) -> None:
        self.children = list(children)
        self.env = dict(env if env is not None else os.environ)
        self.stop_timeout = stop_timeout
        self.signals = 0
        self.exit_code = 0
        self._arm_child = die_with_parent()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals > 1:  # a second Ctrl-C: ask again (workers then hand their jobs back at once)
            self._signal_all(signal.SIGTERM)

    def run(self) -> int:
        """Supervise until a signal or a child's configuration error; the exit code (0 after a
        clean stop, 2 after a configuration error)."""
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        metrics_dir = make_metrics_dir()
        self.env.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        try:
            while not self.signals and not self.exit_code:
                self._tick(time.monotonic())
                time.sleep(0.1)
            self._stop_all()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return self.exit_code

    def _tick(self, now: float) -> None:
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start:
                    self._start(child, now)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            child.exits.append(code)
            child.proc = None
            if code == EXIT_CONFIGURATION and not self.signals:
                _say(f"{child.name} exited with code 2, a configuration error (see its line above); not restarting it")
                self.exit_code = EXIT_CONFIGURATION
                return
            if now - child.started >= HEALTHY_AFTER:
                child.restarts = 0
            delay = min(BACKOFF_CAP, BACKOFF_START * 2**child.restarts)
            child.restarts += 1
            child.next_start = now + delay
            _say(f"{child.name} exited with code {code}; restarting in {delay:.1f} s")

    def _start(self, child: Child, now: float) -> None:
        child.proc = subprocess.Popen(list(child.argv), env=self.env, start_new_session=True,
                                      preexec_fn=self._arm_child)
        child.started = now
        log.info("%s started (pid %d)", child.name, child.proc.pid)

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)

    def _stop_all(self) -> None:
        _say("stopping: SIGTERM to every child")
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _say(f"{child.name} did not stop within {self.stop_timeout:.0f} s; killed")
                child.proc.kill()
                child.proc.wait()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGTERM the child when this process dies (Linux; None
    elsewhere). The children run in sessions of their own, so nothing else would reach them after
    a kill -9 of the supervisor. The signal comes when the forking *thread* ends: fork from the
    thread that lives as long as the supervisor (``run`` on the main thread does)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls it
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before prctl: no signal would come
            os._exit(0)

    return arm


def make_metrics_dir() -> str:
    """A new directory for the children's metrics files, named after this process; first, those
    of supervisors that are gone (killed with SIGKILL: no clean-up ran) are removed."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid, _, rest = name.removeprefix(METRICS_DIR_PREFIX).partition("-")
        if name.startswith(METRICS_DIR_PREFIX) and pid.isdigit() and rest and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _say(text: str) -> None:
    # after SIGHUP the terminal may be gone: a failed write must not stop the stop
    with contextlib.suppress(OSError):
        print(f"conveyor up: {text}", file=sys.stderr, flush=True)


__all__ = ["STOP_SIGNALS", "Child", "Supervisor", "die_with_parent"]
