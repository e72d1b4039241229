"""Redis-only behaviour: script reloading, connection errors, wake-ups, coalesced enqueue, drop."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor.backends.base import JobQuery
from conveyor.backends.redis import RedisBackend, packing
from conveyor.core.errors import BackendUnavailable, ConfigurationError, ValidationError
from conveyor.core.ids import uuid7
from conveyor.core.job import Job


@pytest.fixture
async def rb() -> AsyncIterator[RedisBackend]:
    b = RedisBackend(f"redis://127.0.0.1:6379/0?prefix=rtest_{uuid.uuid4().hex[:10]}")
    await b.open()
    yield b
    await b.drop()
    await b.close()


def job(**fields: object) -> Job:
    return Job(id=uuid7(), task="t", created_at=time.time(), **fields)  # type: ignore[arg-type]


async def test_scripts_reload_after_script_flush(rb: RedisBackend) -> None:
    await rb.r.script_flush()
    [(stored, created)] = await rb.enqueue([job()])
    assert created and stored.status == "queued"


async def test_unreachable_server_is_backend_unavailable() -> None:
    b = RedisBackend("redis://127.0.0.1:1/0?prefix=nowhere")
    with pytest.raises(BackendUnavailable, match="unreachable"):
        await b.open()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # redis-py reads an option without a value as not given, and the last of a repeated one
        ("redis://127.0.0.1:6379/0?prefix=rtest_x&socket_timeout=", "option 'socket_timeout' has no value"),
        ("redis://127.0.0.1:6379/0?prefix=rtest_x&prefix=rtest_y", "option 'prefix' is given twice"),
        # the cluster client raised a bare TypeError when first used
        ("redis+cluster://127.0.0.1:6379/0?prefix=rtest_x&bogus=1", "unknown option 'bogus'"),
    ],
)
def test_url__option_empty_repeated_or_unknown__configuration_error(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisBackend(url)
    assert expected in str(caught.value)


async def test_wait_for_work_wakes_on_enqueue(rb: RedisBackend) -> None:
    await rb.r.delete(rb._qk("default", "wake"))
    waiter = asyncio.create_task(rb.wait_for_work(["default"], 5.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    t0 = time.monotonic()
    await rb.enqueue([job()])
    await asyncio.wait_for(waiter, 1.0)
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("blocking", [False, True], ids=["async", "blocking"])
async def test_wait_and_claim_right_after_a_claim__leases_a_job_as_it_comes_due(rb: RedisBackend,
                                                                               blocking: bool) -> None:
    """The wait takes the due time from the claim just before it (no read of its own)."""
    [(scheduled, _)] = await rb.enqueue([job(scheduled_at=time.time() + 0.3, status="scheduled")])
    await rb.r.delete(rb._qk("default", "wake"))
    assert await rb.claim(["default"], 4, "w", time.time()) == []
    t0 = time.monotonic()
    if blocking:
        leases = await asyncio.to_thread(rb.wait_and_claim_blocking, ["default"], 5.0, 4, "w")
    else:
        leases = await rb.wait_and_claim(["default"], 5.0, 4, "w")
    assert leases is not None and [lease.job.id for lease in leases] == [scheduled.id]
    assert 0.15 < time.monotonic() - t0 < 1.5


async def test_a_task_cancelled_inside_a_call__is_cancelled(rb: RedisBackend) -> None:
    """A stop or a timeout cancels what is in flight (redis-py with a socket timeout swallowed
    most such cancels, and a worker's stop hung on its housekeeping loop)."""

    async def busy() -> None:
        while True:
            await rb.get_jobs([uuid7()])

    for _ in range(20):
        task = asyncio.create_task(busy())
        await asyncio.sleep(random.uniform(0.0005, 0.003))
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert done and task.cancelled()


async def test_wait_and_claim_blocking__job_arrives__leased_to_the_waiting_thread(rb: RedisBackend) -> None:
    waiter = asyncio.ensure_future(asyncio.to_thread(rb.wait_and_claim_blocking, ["default"], 5.0, 4, "w"))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    [(stored, _)] = await rb.enqueue([job()])
    leases = await asyncio.wait_for(waiter, 2.0)
    assert time.monotonic() - t0 < 0.5
    assert leases is not None and [lease.job.id for lease in leases] == [stored.id]
    [running] = await rb.get_jobs([stored.id])
    assert (running.status, running.worker_id, running.lease_token) == ("running", "w", leases[0].token)


async def test_wait_and_claim_blocking__nothing_arrives__nothing_after_the_timeout(rb: RedisBackend) -> None:
    t0 = time.monotonic()
    leases = await asyncio.to_thread(rb.wait_and_claim_blocking, ["default"], 0.2, 4, "w")
    assert not leases
    assert 0.1 <= time.monotonic() - t0 < 2.0


async def test_coalesced_enqueue_isolates_a_bad_caller(rb: RedisBackend) -> None:
    good = [job() for _ in range(20)]
    bad = job(depends_on=[uuid7()])
    results = await asyncio.gather(*(rb.enqueue([g]) for g in good[:10]), rb.enqueue([bad]),
                                   *(rb.enqueue([g]) for g in good[10:]), return_exceptions=True)
    assert isinstance(results[10], ValidationError)
    assert all(isinstance(r, list) and r[0][1] for i, r in enumerate(results) if i != 10)
    assert len(await rb.get_jobs([g.id for g in good])) == 20


async def test_list_cursor_is_stable_under_concurrent_inserts(rb: RedisBackend) -> None:
    first = [job() for _ in range(5)]
    for j in first:
        await rb.enqueue([j])
    page = await rb.list_jobs(JobQuery(limit=2))
    await rb.enqueue([job() for _ in range(3)])
    rest = await rb.list_jobs(JobQuery(limit=10, cursor=page.next_cursor))
    seen = [j.id for j in page.items + rest.items]
    assert seen == [j.id for j in reversed(first)]


async def test_bad_cursor_is_a_validation_error(rb: RedisBackend) -> None:
    with pytest.raises(ValidationError):
        await rb.list_jobs(JobQuery(cursor="!!!"))


async def test_drop_deletes_every_key_under_the_prefix(rb: RedisBackend) -> None:
    await rb.enqueue([job(queue="a"), job(queue="b")])
    await rb.drop()
    keys = [k async for k in rb.r.scan_iter(match=f"*{rb.prefix}*")]
    assert keys == []


@pytest.mark.parametrize("hiredis", [True, False], ids=["packed by hiredis", "packed by redis-py"])
async def test_enqueue_blocking__from_a_thread__stores_jobs_like_enqueue(
        rb: RedisBackend, hiredis: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hiredis:
        monkeypatch.setattr(packing, "hiredis_pack", None)
    plain, keyed = job(args=["naïve ☕"]), job(idempotency_key="order-1")

    stored = await asyncio.to_thread(rb.enqueue_blocking, [plain, keyed])
    replay = await asyncio.to_thread(rb.enqueue_blocking, [job(idempotency_key="order-1")])

    assert [(s.id, s.status, created) for s, created in stored] == [
        (plain.id, "queued", True), (keyed.id, "queued", True)]
    assert [(s.id, created) for s, created in replay] == [(keyed.id, False)]
    assert {j.id for j in await rb.get_jobs([plain.id, keyed.id])} == {plain.id, keyed.id}
    assert [lease.job.id for lease in await rb.claim(["default"], 5, "w", time.time())] == [plain.id, keyed.id]
    assert (await rb.get_jobs([plain.id]))[0].args == ["naïve ☕"]
    # the path asked for was taken (a patch of a name the packing no longer reads would miss)
    assert issubclass(rb._sync_client().connection_pool.connection_class, packing.HiredisPacking) is hiredis


async def test_enqueue_blocking__unknown_parent__validation_error(rb: RedisBackend) -> None:
    with pytest.raises(ValidationError, match="depends_on"):
        await asyncio.to_thread(rb.enqueue_blocking, [job(depends_on=[str(uuid7())])])


async def test_enqueue_blocking__after_script_flush__reloads(rb: RedisBackend) -> None:
    await asyncio.to_thread(rb.enqueue_blocking, [job()])
    await rb.r.script_flush()
    [(stored, created)] = await asyncio.to_thread(rb.enqueue_blocking, [job()])
    assert created and stored.status == "queued"


async def test_enqueue_blocking__many_threads_at_once__every_job_stored_once(rb: RedisBackend) -> None:
    def submit(n: int) -> list[str]:
        return [rb.enqueue_blocking([job()])[0][0].id for _ in range(n)]

    batches = await asyncio.gather(*(asyncio.to_thread(submit, 40) for _ in range(8)))

    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == 320
    assert len(await rb.get_jobs(ids)) == 320


def test_enqueue_blocking__database_the_server_lacks__configuration_error_naming_it() -> None:
    """The sync enqueue (``task.enqueue``) raised redis-py's bare ResponseError "DB index is out of range"."""
    b = RedisBackend(f"redis://127.0.0.1:6379/99?prefix=rtest_{uuid.uuid4().hex[:10]}")
    with pytest.raises(ConfigurationError, match=r"^redis at 127\.0\.0\.1:6379 has no database 99 \(it has \d+: 0 to "):
        b.enqueue_blocking([job()])
    b.close_blocking()


async def test_open__database_the_server_lacks__configuration_error_naming_it() -> None:
    b = RedisBackend(f"redis://127.0.0.1:6379/99?prefix=rtest_{uuid.uuid4().hex[:10]}")
    with pytest.raises(ConfigurationError, match=r"^redis at 127\.0\.0\.1:6379 has no database 99 \(it has \d+: 0 to "):
        await b.open()


def test_enqueue_blocking__unreachable_server__backend_unavailable() -> None:
    b = RedisBackend("redis://127.0.0.1:1/0?prefix=nowhere")
    with pytest.raises(BackendUnavailable, match="unreachable"):
        b.enqueue_blocking([job()])
    b.close_blocking()


async def test_enqueue_blocking__concurrent_threads__share_round_trips(rb: RedisBackend) -> None:
    calls = []
    script = rb._enqueue_script_blocking

    def counted(count: int, payload: list[str], now: float) -> list[object]:
        calls.append(count)
        return script(count, payload, now)

    rb._enqueue_script_blocking = counted  # type: ignore[method-assign]

    def submit(n: int) -> list[str]:
        return [rb.enqueue_blocking([job()])[0][0].id for _ in range(n)]

    batches = await asyncio.gather(*(asyncio.to_thread(submit, 40) for _ in range(8)))

    ids = [i for batch in batches for i in batch]
    assert len(await rb.get_jobs(ids)) == 320 == sum(calls)
    assert len(calls) < 320 and max(calls) > 1  # callers that met shared a script call


async def test_enqueue_blocking__a_mistake_sent_with_others__fails_only_its_caller(rb: RedisBackend) -> None:
    import threading

    script = rb._enqueue_script_blocking
    first_sent, go = threading.Event(), threading.Event()

    def held(count: int, payload: list[str], now: float) -> list[object]:
        if not first_sent.is_set():
            first_sent.set()
            assert go.wait(5)
        return script(count, payload, now)

    rb._enqueue_script_blocking = held  # type: ignore[method-assign]
    first = asyncio.create_task(asyncio.to_thread(rb.enqueue_blocking, [job()]))
    assert await asyncio.to_thread(first_sent.wait, 5)
    good, orphan, keyed = job(), job(depends_on=[str(uuid7())]), job(idempotency_key="k")
    calls = [asyncio.create_task(asyncio.to_thread(rb.enqueue_blocking, jobs))
             for jobs in ([good], [orphan], [keyed], [job(idempotency_key="k")])]
    deadline = time.monotonic() + 5
    while len(rb._enqueue_group._queue) < 5:  # all four queued behind the first send
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    go.set()
    outcomes = await asyncio.gather(first, *calls, return_exceptions=True)

    assert isinstance(outcomes[2], ValidationError)
    assert [(s.id, created) for s, created in outcomes[1]] == [(good.id, True)]  # type: ignore[union-attr]
    assert [(s.id, created) for s, created in outcomes[3]] == [(keyed.id, True)]  # type: ignore[union-attr]
    assert [(s.id, created) for s, created in outcomes[4]] == [(keyed.id, False)]  # type: ignore[union-attr]
    assert await rb.get_jobs([orphan.id]) == []


async def test_end_wait__ends_a_wait_at_once__a_late_one_does_not_end_the_next(rb: RedisBackend) -> None:
    waiter = asyncio.create_task(rb.wait_for_work(["default"], 5.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await rb.end_wait()
    await asyncio.wait_for(waiter, 2.0)
    assert time.monotonic() - started < 0.5

    await rb.end_wait()  # no wait in progress: its token must not end the next wait
    started = time.monotonic()
    await rb.wait_for_work(["default"], 0.3)
    assert time.monotonic() - started >= 0.25


def _enqueue_in_child(url: str, out: Any) -> None:
    """Runs in a forked child: new jobs, each must come back as itself, created."""
    b = _FORKED[url]
    wrong = 0
    for _ in range(300):
        j = job()
        [(stored, created)] = b.enqueue_blocking([j])
        wrong += stored.id != j.id or not created
    out.put(wrong)


_FORKED: dict[str, RedisBackend] = {}


async def test_enqueue_blocking__forked_child__uses_its_own_connection_not_the_parents(rb: RedisBackend) -> None:
    """A process that forks after a sync enqueue (multiprocessing, a pre-forking server): the
    child must not share the parent's kept connection, or each could read the other's replies."""
    import multiprocessing

    [(keyed, _)] = rb.enqueue_blocking([job(idempotency_key="k")])  # the parent's connection is kept now
    _FORKED[rb.url] = rb
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_enqueue_in_child, args=(rb.url, out))
    child.start()
    try:
        wrong = 0
        for _ in range(300):  # replays while the child enqueues new jobs
            [(stored, created)] = rb.enqueue_blocking([job(idempotency_key="k")])
            wrong += stored.id != keyed.id or created
        assert wrong == 0
        assert out.get(timeout=30) == 0
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
        del _FORKED[rb.url]
    assert child.exitcode == 0
