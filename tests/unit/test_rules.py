"""Pure rules: the transition table, backoff, outcome decisions, queue settings."""

from __future__ import annotations

import random

import pytest

from conveyor.core import rules
from conveyor.core.errors import ValidationError
from conveyor.core.job import TERMINAL, TRANSITIONS, Job, Status, can_transition
from conveyor.core.queues import QueueSettings
from conveyor.core.retry import backoff
from conveyor.core.task import TaskOptions
from conveyor.serialization import from_rfc3339, to_rfc3339


def test_transitions__terminal_statuses_only_go_back_to_queued_or_waiting():
    assert {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED} == TERMINAL
    assert TRANSITIONS[Status.SUCCEEDED] == frozenset()
    for status in (Status.FAILED, Status.CANCELLED, Status.EXPIRED):
        assert TRANSITIONS[status] == {Status.QUEUED, Status.WAITING}  # waiting: a dependent's parent is pending


def test_transitions__running_can_end_every_way_but_expired():
    assert can_transition(Status.RUNNING, Status.SUCCEEDED)
    assert can_transition(Status.RUNNING, Status.RETRYING)
    assert can_transition(Status.RUNNING, Status.QUEUED)  # lease lost or handed back
    assert not can_transition(Status.RUNNING, Status.EXPIRED)
    assert not can_transition(Status.QUEUED, Status.SUCCEEDED)


def test_backoff__full_jitter_within_exponential_ceiling():
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (5, 16), (20, 3600), (500, 3600)]:
        waits = [backoff(attempt, rng=rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # jitter spans the whole range


def _job(**kw):
    return Job(id="0193b6c2-8f5e-7c3a-9d1e-3f2a1b4c5d6e", task="t", **kw)


def test_failed_attempt__retries_while_retries_remain_then_fails():
    error = {"type": "ValueError", "message": "x", "traceback": None}
    first = rules.failed_attempt(_job(attempt=1, max_retries=3), "tok", error, now=100.0)
    assert first.status is Status.RETRYING and first.attempt == 2
    assert 100.0 <= first.scheduled_at <= 101.0
    last = rules.failed_attempt(_job(attempt=4, max_retries=3), "tok", error, now=100.0)
    assert last.status is Status.FAILED and last.error == error
    never = rules.failed_attempt(_job(attempt=1, max_retries=0), "tok", error, now=100.0)
    assert never.status is Status.FAILED


def test_failed_attempt__task_backoff_options_apply():
    error = {"type": "E", "message": "", "traceback": None}
    outcome = rules.failed_attempt(_job(attempt=3, max_retries=5), "t", error, 0.0, TaskOptions(backoff_base=10))
    assert 0 <= outcome.scheduled_at <= 40


def test_delivery_lost__requeues_until_the_delivery_limit():
    assert rules.delivery_lost(_job(deliveries=2), "t", 3, "killed").status is Status.QUEUED
    dead = rules.delivery_lost(_job(deliveries=3), "t", 3, "killed")
    assert dead.status is Status.FAILED and dead.error["type"] == "DeliveryLimitExceeded"


def test_handed_back__does_not_count_the_delivery():
    outcome = rules.handed_back(_job(), "t")
    assert outcome.status is Status.QUEUED and outcome.uncount_delivery


@pytest.mark.parametrize(("changes", "pointer"), [
    ({"retention": 10}, "#/retention"),
    ({"retention": 15 * 86400}, "#/retention"),
    ({"visibility_timeout": 0.5}, "#/visibility_timeout"),
    ({"visibility_timeout": 13 * 3600}, "#/visibility_timeout"),
    ({"max_deliveries": 0}, "#/max_deliveries"),
    ({"max_deliveries": True}, "#/max_deliveries"),
    ({"retention": "1 day"}, "#/retention"),
])
def test_queue_settings__out_of_range__names_the_setting(changes, pointer):
    with pytest.raises(ValidationError) as err:
        QueueSettings().replace(**changes)
    assert err.value.errors[0]["pointer"] == pointer


def test_queue_settings__defaults_match_the_spec():
    s = QueueSettings()
    assert (s.retention, s.visibility_timeout, s.max_deliveries, s.result_ttl, s.paused) == (
        4 * 86400, 30.0, 10, 7 * 86400, False)
    with pytest.raises(ValidationError, match="unknown queue setting"):
        s.replace(colour="blue")


def test_timestamps__rfc3339_utc_milliseconds():
    assert to_rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert to_rfc3339(1764324000.1234) == "2025-11-28T10:00:00.123Z"
    assert from_rfc3339("2025-11-28T11:00:00.123+01:00") == pytest.approx(1764324000.123)
    assert to_rfc3339(None) is None
