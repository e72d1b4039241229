"""Global limits with real worker processes: the backend enforces them across every worker."""

from __future__ import annotations

import time

from conveyor.core.job import Status
from tests.e2e.conftest import wait_for
from tests.e2e.jobs_app import recorded


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans running at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # ends sort before starts
    best = now = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def test_concurrency_limit_2__ten_jobs_four_workers__never_more_than_2_run(e2e):
    handles = [e2e.enqueue("limited_sleep", 0.3) for _ in range(10)]
    for _ in range(4):
        e2e.worker("--concurrency", "4")

    e2e.wait_all(handles, timeout=25)

    assert {h.refresh().status for h in handles} == {Status.SUCCEEDED}, e2e.logs()
    spans = [(r["start"], r["end"]) for r in recorded(e2e.log) if r["event"] == "limited"]
    assert len(spans) == 10
    assert max_overlap(spans) == 2
    assert len({r["pid"] for r in recorded(e2e.log)}) >= 2  # the limit held across processes


def test_rate_limit_5_per_second__over_3_seconds__stays_within_the_limit(e2e):
    for n in range(30):  # 6 s of work at 5/s: more than the 3 s measured
        e2e.enqueue("rate_limited", n)
    for _ in range(2):
        e2e.worker("--concurrency", "4")

    def started() -> list[float]:
        return sorted(r["start"] for r in recorded(e2e.log) if r["event"] == "rated")

    wait_for(lambda: started() and time.time() > started()[0] + 3.2, timeout=20, what="3 s of starts")

    starts = started()
    first = starts[0]
    # 3 s less the jitter between a claim and the task reading its clock (the first batch's threads
    # start a few ms after their claim, so the batch claimed 3 s later would otherwise count too)
    window = [t for t in starts if t < first + 2.95]
    assert 12 <= len(window) <= 15 + 1
    for t in starts:  # a sliding limit: never more than 5 starts in any second (less a few ms of
        # jitter between the claim and the task's own clock reading)
        assert len([u for u in starts if t <= u < t + 0.95]) <= 5
