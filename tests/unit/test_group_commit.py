"""GroupCommit: concurrent callers share one send, each gets its own outcome, none hangs."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from conveyor.backends.group_commit import GroupCommit
from conveyor.core.errors import BackendUnavailable

WAIT = 5.0  # every wait of these tests is bounded


class Sender:
    """``send`` that records its batches; the first one can be held until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, subs: Sequence[str]) -> list[str | BaseException]:
        self.batches.append(list(subs))
        if len(self.batches) == 1:
            self.first_started.set()
            assert self.release.wait(WAIT)
        if "explode" in subs:
            raise ConnectionError("engine gone")
        return [ValueError(f"bad {s}") if s.startswith("bad") else s.upper() for s in subs]


def run_in_threads(gc: GroupCommit[str, str], subs: list[str]) -> tuple[dict[str, object], list[threading.Thread]]:
    outcomes: dict[str, object] = {}

    def call(sub: str) -> None:
        try:
            outcomes[sub] = gc.submit(sub)
        except BaseException as exc:
            outcomes[sub] = exc

    threads = [threading.Thread(target=call, args=(s,)) for s in subs]
    for t in threads:
        t.start()
    return outcomes, threads


def wait_queued(gc: GroupCommit[str, str], n: int) -> None:
    deadline = time.monotonic() + WAIT
    while len(gc._queue) < n:
        assert time.monotonic() < deadline, f"{len(gc._queue)} of {n} callers queued"
        time.sleep(0.001)


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), "a caller hangs"


def test_a_lone_caller_sends_at_once() -> None:
    send = Sender()
    gc = GroupCommit(send, size=lambda s: 1)
    assert gc.submit("a") == "A"
    assert gc.submit("b") == "B"
    assert send.batches == [["a"], ["b"]]


def test_callers_arriving_during_a_send__share_the_next_one__each_gets_its_own_result() -> None:
    send = Sender(hold_first=True)
    gc = GroupCommit(send, size=lambda s: 1)
    first, t1 = run_in_threads(gc, ["first"])
    assert send.first_started.wait(WAIT)
    rest, t2 = run_in_threads(gc, [f"c{i}" for i in range(6)])
    wait_queued(gc, 7)
    send.release.set()
    join(t1 + t2)

    assert send.batches[0] == ["first"]
    assert sorted(send.batches[1]) == [f"c{i}" for i in range(6)]  # one send for the six
    assert first == {"first": "FIRST"}
    assert rest == {f"c{i}": f"C{i}" for i in range(6)}


def test_one_callers_error__is_raised_in_that_caller_only() -> None:
    send = Sender(hold_first=True)
    gc = GroupCommit(send, size=lambda s: 1)
    _, t1 = run_in_threads(gc, ["first"])
    assert send.first_started.wait(WAIT)
    out, t2 = run_in_threads(gc, ["ok1", "bad", "ok2"])
    wait_queued(gc, 4)
    send.release.set()
    join(t1 + t2)

    assert out["ok1"] == "OK1" and out["ok2"] == "OK2"
    assert isinstance(out["bad"], ValueError)


def test_a_failed_send__fails_its_callers__and_the_next_batch_still_goes() -> None:
    send = Sender(hold_first=True)
    gc = GroupCommit(send, size=lambda s: 1)
    _, t1 = run_in_threads(gc, ["first"])
    assert send.first_started.wait(WAIT)
    out, t2 = run_in_threads(gc, ["explode", "x"])
    wait_queued(gc, 3)
    send.release.set()
    join(t1 + t2)

    assert isinstance(out["explode"], ConnectionError) and isinstance(out["x"], ConnectionError)
    assert gc.submit("later") == "LATER"


def test_a_batch_holds_at_most_limit_items__a_submission_is_never_split() -> None:
    send = Sender(hold_first=True)
    gc = GroupCommit(send, size=len, limit=5)
    _, t1 = run_in_threads(gc, ["x"])
    assert send.first_started.wait(WAIT)
    _, t2 = run_in_threads(gc, ["aaa"])
    wait_queued(gc, 2)
    _, t3 = run_in_threads(gc, ["bb"])
    wait_queued(gc, 3)
    _, t4 = run_in_threads(gc, ["cccccccc"])  # longer than the limit on its own
    wait_queued(gc, 4)
    send.release.set()
    join(t1 + t2 + t3 + t4)

    assert send.batches == [["x"], ["aaa", "bb"], ["cccccccc"]]


def test_a_waiter_interrupted_by_ctrl_c__leaves_the_queue__the_others_go_on() -> None:
    send = Sender(hold_first=True)
    gc = GroupCommit(send, size=lambda s: 1)
    _, t1 = run_in_threads(gc, ["first"])
    assert send.first_started.wait(WAIT)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C while this thread waits
    with pytest.raises(KeyboardInterrupt):
        gc.submit("main")
    out, t2 = run_in_threads(gc, ["after"])
    wait_queued(gc, 2)
    send.release.set()
    join(t1 + t2)

    assert out == {"after": "AFTER"}
    assert ["main"] not in send.batches and all("main" not in b for b in send.batches)
    assert gc.submit("last") == "LAST"


def test_an_interrupted_leader__raises_it__its_followers_get_backend_unavailable() -> None:
    def send(subs: Sequence[str]) -> list[str | BaseException]:
        if subs == ["first"]:
            first_started.set()
            assert go.wait(WAIT)
        if "leader" in subs:
            raise KeyboardInterrupt  # as if Ctrl-C hit the thread sending this batch
        return [s.upper() for s in subs]

    first_started, go = threading.Event(), threading.Event()
    gc: GroupCommit[str, str] = GroupCommit(send, size=lambda s: 1)
    _, t1 = run_in_threads(gc, ["first"])
    assert first_started.wait(WAIT)
    lead, t2 = run_in_threads(gc, ["leader"])
    wait_queued(gc, 2)
    follower, t3 = run_in_threads(gc, ["follower"])  # queued behind "leader": sent in its batch
    wait_queued(gc, 3)
    go.set()
    join(t1 + t2 + t3)

    assert isinstance(lead["leader"], KeyboardInterrupt)  # the interrupted thread raises its own
    assert isinstance(follower["follower"], BackendUnavailable)  # its fate unknown, as after a drop
    assert gc.submit("later") == "LATER"


def _submit_in_child(gc: GroupCommit[str, str], out: Any) -> None:
    out.put(gc.submit("child"))


def test_a_child_forked_while_a_send_is_in_flight__does_not_wait_for_it() -> None:
    import multiprocessing

    send = Sender(hold_first=True)
    gc = GroupCommit(send, size=lambda s: 1)
    _, t1 = run_in_threads(gc, ["parent"])
    assert send.first_started.wait(WAIT)  # the parent's send holds the queue's front
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_submit_in_child, args=(gc, out))
    child.start()
    try:
        assert out.get(timeout=WAIT) == "CHILD"  # the child sent its own, at once
    finally:
        child.join(WAIT)
        if child.is_alive():
            child.kill()
        send.release.set()
        join(t1)
    assert child.exitcode == 0
