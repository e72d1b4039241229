"""Chains and groups: stored at once, run in order, failures cancel what follows."""

from __future__ import annotations

import asyncio

import pytest

from conveyor import Context, Conveyor, chain, group
from conveyor.core.errors import ValidationError
from conveyor.core.job import Status
from conveyor.worker import Worker


@pytest.fixture
def app(tmp_path):
    app = Conveyor(f"sqlite:///{tmp_path}/wf.db")

    @app.task
    def add(ctx: Context, a: int, b: int) -> int:
        return a + b

    @app.task
    def total(ctx: Context) -> int:
        return sum(ctx.parent_results.values())

    @app.task(max_retries=0)
    def boom(ctx: Context) -> None:
        raise RuntimeError("boom")

    yield app
    app.close()


def drain(app: Conveyor) -> None:
    """Run a worker in this process until no job is left (burst mode)."""
    asyncio.run(Worker(app, burst=True, scheduler=False).run())


def test_chain_of_group__join_runs_after_every_member_with_their_results(app):
    add, total = app.tasks["add"], app.tasks["total"]
    handles = chain(group(add.s(1, 2), add.s(3, 4), add.s(5, 6)), total.s()).enqueue()
    assert [h.status for h in handles] == [Status.QUEUED] * 3 + [Status.WAITING]
    drain(app)
    for h in handles:
        h.refresh()
    assert handles[-1].result == 21
    join = handles[-1].job
    assert join.started_at >= max(h.job.finished_at for h in handles[:3])


def test_chain__a_failed_step_cancels_the_rest_naming_the_parent(app):
    boom, add = app.tasks["boom"], app.tasks["add"]
    first, second, third = chain(boom.s(), add.s(1, 1), add.s(2, 2)).enqueue()
    drain(app)
    assert first.refresh().status is Status.FAILED
    assert second.refresh().status is Status.CANCELLED and first.id in second.error["message"]
    assert third.refresh().status is Status.CANCELLED and second.id in third.error["message"]


def test_signature__arguments_are_validated_when_the_signature_is_made(app):
    with pytest.raises(ValidationError):
        app.tasks["add"].s(1, "two")
    with pytest.raises(ValidationError):
        chain()


def test_depends_on_names__an_id_in_upper_case__the_child_reads_the_result_by_name(app):
    """Ids are accepted in any case; the name map kept the id as given, so the name read None."""

    @app.task
    def by_name(ctx: Context) -> object:
        return ctx.parent_results["sum"]

    parent = app.tasks["add"].enqueue(40, 2)
    child = by_name.enqueue(depends_on={"sum": parent.id.upper()})
    drain(app)
    assert child.refresh().result == 42


def test_metadata__conveyors_own_key__refused_not_a_job_stuck_running(app):
    """A user value under the key of depends_on's names crashed the worker's start of the job,
    which then stayed ``running`` for as long as that worker lived."""
    parent = app.tasks["add"].enqueue(1, 2)
    with pytest.raises(ValidationError) as refused:
        app.tasks["total"].enqueue(depends_on=[parent], metadata={"conveyor.parents": "x"})
    [error] = refused.value.errors
    assert error == {"pointer": "#/metadata/conveyor.parents", "detail": "reserved for depends_on names"}
