"""Submitting and reading jobs: enqueue, get, list with cursors, idempotency, revisions, settings."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from conveyor.backends.base import JobQuery
from conveyor.core.errors import ValidationError
from conveyor.core.job import Status
from conveyor.core.queues import QueueSettings


async def test_enqueue__plain_job__is_queued_and_readable(backend, new_job, fetch):
    job = new_job(args=["in/cat.mp4"], kwargs={"height": 480}, metadata={"by": "test"}, priority=3)
    [(stored, created)] = await backend.enqueue([job])

    assert created
    assert stored.status is Status.QUEUED
    read = await fetch(job.id)
    assert (read.task, read.queue, read.status) == ("conformance.echo", "default", Status.QUEUED)
    assert list(read.args) == ["in/cat.mp4"]
    assert dict(read.kwargs) == {"height": 480}
    assert dict(read.metadata) == {"by": "test"}
    assert read.priority == 3
    assert (read.attempt, read.deliveries, read.result, read.error) == (1, 0, None, None)
    assert read.created_at == pytest.approx(job.created_at, abs=0.001)


async def test_enqueue__every_field_set__each_reads_back_as_given(backend, submit, new_job, fetch):
    parent = await submit()
    given = {
        "queue": "media", "args": [1, "two", {"three": 3}], "kwargs": {"height": 480, "codec": None},
        "priority": 9, "max_retries": 7, "timeout": 12.5, "depends_on": [parent.id],
        "idempotency_key": "order-42", "metadata": {"by": "test", "n": [1]}, "webhook": "http://127.0.0.1:9/hook",
        "scheduled_at": time.time() + 3600, "limit_key": "api:acme", "concurrency_limit": 2,
        "rate_limit": (5, 1.5),
    }
    job = new_job(**given)
    await backend.enqueue([job])

    read = await fetch(job.id)
    assert {name: getattr(read, name) for name in given} == {**given, "args": [1, "two", {"three": 3}]}
    assert (read.status, read.attempt, read.deliveries, read.cancel_requested) == (Status.WAITING, 1, 0, False)
    assert (read.result, read.error, read.progress, read.lease_token, read.worker_id) == (None,) * 5
    assert read.created_at == pytest.approx(job.created_at, abs=0.001)


async def test_enqueue__batch__stores_every_job_in_order(backend, new_job):
    jobs = [new_job(args=[i]) for i in range(50)]
    results = await backend.enqueue(jobs)

    assert [j.id for j, _ in results] == [j.id for j in jobs]
    assert all(created for _, created in results)
    stored = await backend.get_jobs([j.id for j in jobs])
    assert [list(j.args) for j in stored] == [[i] for i in range(50)]


async def test_enqueue__future_scheduled_at__is_scheduled(backend, submit):
    job = await submit(scheduled_at=time.time() + 60)

    assert job.status is Status.SCHEDULED


async def test_get_jobs__unknown_ids__are_left_out(backend, submit):
    job = await submit()

    found = await backend.get_jobs(["01900000-0000-7000-8000-000000000000", job.id])

    assert [j.id for j in found] == [job.id]


async def test_enqueue__idempotency_key_stored__returns_stored_job(backend, new_job):
    [(first, created)] = await backend.enqueue([new_job(idempotency_key="order-42", args=[1])])
    [(again, created_again)] = await backend.enqueue([new_job(idempotency_key="order-42", args=[2])])

    assert created and not created_again
    assert again.id == first.id
    assert list(again.args) == [1]
    page = await backend.list_jobs(JobQuery())
    assert [j.id for j in page.items] == [first.id]


async def test_enqueue__idempotency_key_twice_in_one_batch__creates_one_job(backend, new_job):
    results = await backend.enqueue([new_job(idempotency_key="k"), new_job(idempotency_key="k")])

    assert [created for _, created in results] == [True, False]
    assert results[0][0].id == results[1][0].id


async def test_enqueue__many_concurrent_callers__each_gets_its_own_jobs__one_key_makes_one_job(backend, new_job):
    # as an API server's concurrent submits arrive: engines may send them together
    singles = [new_job(args=[i]) for i in range(40)]
    pair = [new_job(args=[i]) for i in range(2)]
    keyed = [new_job(idempotency_key="order-7", args=["a"]), new_job(idempotency_key="order-7", args=["b"])]
    results = await asyncio.gather(*(backend.enqueue([j]) for j in singles[:20]), backend.enqueue(pair),
                                   *(backend.enqueue([j]) for j in keyed),
                                   *(backend.enqueue([j]) for j in singles[20:]))

    mine = [[j] for j in singles[:20]] + [pair] + [[j] for j in keyed] + [[j] for j in singles[20:]]
    for given, got in zip(mine, results, strict=True):
        if given[0].idempotency_key is None:
            assert [(j.id, created) for j, created in got] == [(j.id, True) for j in given]
    (first, first_created), (second, second_created) = results[21][0], results[22][0]
    assert first.id == second.id and {first_created, second_created} == {True, False}
    stored = await backend.get_jobs([j.id for j in singles + pair])
    assert sorted(list(j.args) for j in stored) == sorted([[i] for i in range(40)] + [[0], [1]])
    assert len((await backend.list_jobs(JobQuery(limit=100))).items) == 43


async def test_list_jobs__newest_first_with_cursor__pages_through_everything(backend, new_job):
    jobs = [new_job(args=[i]) for i in range(7)]
    await backend.enqueue(jobs)

    seen, cursor = [], None
    for _ in range(10):
        page = await backend.list_jobs(JobQuery(limit=3, cursor=cursor))
        seen += [j.id for j in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == [j.id for j in reversed(jobs)]


@pytest.mark.parametrize("text", ["x", "not-a-uuid", "01A24D8F-391E-7094-A408-514BFF73770B!", '[1.5, "x"]',
                                  '[NaN, "01a24d8f-391e-7094-a408-514bff73770b"]',
                                  f'[1{"0" * 400}, "01a24d8f-391e-7094-a408-514bff73770b"]'])  # too big for a float
async def test_list_jobs__a_cursor_this_api_did_not_make__validation_error(backend, new_job, text):
    """Each engine says the same, and how to get a good one (PostgreSQL said "invalid cursor")."""
    await backend.enqueue([new_job()])
    cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    with pytest.raises(ValidationError, match="invalid cursor: pass the next_cursor of a previous page"):
        await backend.list_jobs(JobQuery(limit=2, cursor=cursor))
    with pytest.raises(ValidationError, match="invalid cursor: pass the next_cursor of a previous page"):
        await backend.list_jobs(JobQuery(limit=2, cursor="!!!"))


async def test_list_jobs__cursor__is_stable_under_new_inserts(backend, new_job):
    jobs = [new_job() for _ in range(4)]
    await backend.enqueue(jobs)
    first = await backend.list_jobs(JobQuery(limit=2))

    await backend.enqueue([new_job() for _ in range(3)])
    second = await backend.list_jobs(JobQuery(limit=2, cursor=first.next_cursor))

    assert [j.id for j in first.items + second.items] == [j.id for j in reversed(jobs)]
    assert second.next_cursor is None


async def test_list_jobs__filters__match_status_task_and_queue(backend, submit, claim_one):
    a = await submit("t.a", queue="media")
    await submit("t.b", queue="media")
    c = await submit("t.a", queue="mail")
    await claim_one("mail")

    assert [j.id for j in (await backend.list_jobs(JobQuery(task="t.a"))).items] == [c.id, a.id]
    assert [j.id for j in (await backend.list_jobs(JobQuery(queue="mail"))).items] == [c.id]
    assert [j.id for j in (await backend.list_jobs(JobQuery(status=Status.RUNNING))).items] == [c.id]
    media_a = await backend.list_jobs(JobQuery(task="t.a", queue="media", status=Status.QUEUED))
    assert [j.id for j in media_a.items] == [a.id]


async def test_revisions__every_change__bumps_the_revision(backend, submit, claim_one):
    job = await submit()
    seen = [(await backend.revisions([job.id]))[job.id]]

    lease = await claim_one()
    seen.append((await backend.revisions([job.id]))[job.id])
    await backend.set_progress(job.id, lease.token, {"fraction": 0.5}, time.time())
    seen.append((await backend.revisions([job.id]))[job.id])
    await backend.cancel(job.id, time.time())
    seen.append((await backend.revisions([job.id]))[job.id])

    assert seen == sorted(set(seen)), f"revisions must strictly increase: {seen}"
    assert await backend.revisions(["01900000-0000-7000-8000-000000000000"]) == {}


async def test_queue_settings__saved__round_trip(backend):
    assert await backend.queue_settings("media") == QueueSettings()

    settings = QueueSettings(retention=120.0, visibility_timeout=5.0, max_deliveries=2, result_ttl=60.0,
                             paused=True)
    await backend.save_queue_settings("media", settings)

    assert await backend.queue_settings("media") == settings
    [info] = await backend.queues(["media"])
    assert info.settings == settings


async def test_queues__counts__per_status_for_known_queues(backend, submit, claim_one):
    await submit(queue="media")
    await submit(queue="media")
    await submit(queue="media", scheduled_at=time.time() + 60)
    await claim_one("media")
    await backend.save_queue_settings("empty", QueueSettings())

    infos = {q.name: q for q in await backend.queues()}

    assert set(infos) == {"media", "empty"}
    assert infos["media"].to_json()["queued"] == 1
    assert infos["media"].to_json()["running"] == 1
    assert infos["media"].to_json()["scheduled"] == 1
    assert infos["empty"].to_json()["queued"] == 0


async def test_enqueue__unknown_parent__raises_validation_error_naming_it(backend, submit, new_job):
    parent = await submit()
    missing = "01900000-0000-7000-8000-000000000000"

    with pytest.raises(ValidationError) as caught:
        await backend.enqueue([new_job(depends_on=[parent.id, missing])])

    assert caught.value.errors[0]["pointer"] == "#/depends_on/1"
    assert missing in caught.value.errors[0]["detail"]
    assert len((await backend.list_jobs(JobQuery())).items) == 1
