"""Redis Cluster-only behaviour: one slot per installation, routing, wake-ups, script reloads.

The whole conformance suite also runs on the cluster (engine ``redis-cluster`` in conftest.py);
these tests check what that suite cannot see: where the keys land.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from conveyor.backends import create_backend
from conveyor.backends.base import Outcome, WorkerInfo
from conveyor.backends.redis import RedisBackend
from conveyor.core.errors import BackendUnavailable, ConfigurationError
from conveyor.core.ids import uuid7
from conveyor.core.job import Job, Status


def job(**fields: object) -> Job:
    return Job(id=uuid7(), task="t", created_at=time.time(), **fields)  # type: ignore[arg-type]


async def open_cluster(node: str, prefix: str) -> RedisBackend:
    b = create_backend(f"redis+cluster://{node}/?prefix={prefix}")
    assert isinstance(b, RedisBackend) and b.cluster
    await b.open()
    return b


@pytest.fixture
async def cb(redis_cluster: str) -> AsyncIterator[RedisBackend]:
    b = await open_cluster(redis_cluster, f"ctest_{uuid.uuid4().hex[:10]}")
    yield b
    await b.drop()
    await b.close()


async def test_every_key_of_an_installation_is_in_one_slot(cb: RedisBackend) -> None:
    now = time.time()
    [(parent, _)] = await cb.enqueue([job(queue="a", limit_key="k", concurrency_limit=2, rate_limit=(5, 60.0),
                                          webhook="http://127.0.0.1:1/hook", idempotency_key="idem-1")])
    [(child, _)] = await cb.enqueue([job(queue="b", depends_on=[parent.id])])
    await cb.enqueue([job(queue="c", scheduled_at=now + 60, status="scheduled")])
    await cb.save_queue_settings("d", (await cb.queue_settings("d")))
    [lease] = await cb.claim(["a"], 1, "w1", now)
    await cb.heartbeat(WorkerInfo(id="w1", host="h", pid=1, queues=("a",), concurrency=1), {parent.id: lease.token},
                       now)
    assert await cb.finish([Outcome(parent.id, lease.token, Status.SUCCEEDED, result=1)], now) == [True]
    assert (await cb.get_jobs([child.id]))[0].status == Status.QUEUED

    keys = [k async for k in cb.r.scan_iter(match=f"{{{cb.prefix}}}:*", count=1000)]
    assert any(":q/a/j:" in k for k in keys) and any(k.endswith(":q/b/wake") for k in keys)
    assert any(":ls:" in k for k in keys) and any(k.endswith(":idem") for k in keys)
    slots = {await cb.r.cluster_keyslot(k) for k in keys}  # type: ignore[no-untyped-call]
    assert len(slots) == 1, f"{len(keys)} keys in {len(slots)} slots"


async def test_installations_spread_over_the_primaries(redis_cluster: str) -> None:
    probe = await open_cluster(redis_cluster, "probe")
    try:
        by_node: dict[str, str] = {}
        for i in range(200):
            prefix = f"ctest_spread_{uuid.uuid4().hex[:6]}_{i}"
            node = probe.r.get_node_from_key(f"{{{prefix}}}:jq")  # type: ignore[union-attr]
            by_node.setdefault(node.name, prefix)
            if len(by_node) == 3:
                break
    finally:
        await probe.close()
    assert len(by_node) == 3
    backends = [await open_cluster(redis_cluster, p) for p in by_node.values()]
    try:
        for b in backends:
            await b.enqueue([job(queue=f"q{i}") for i in range(3)])
        for b in backends:
            leases = await b.claim(["q0", "q1", "q2"], 10, "w", time.time())
            assert len(leases) == 3
    finally:
        for b in backends:
            await b.drop()
            await b.close()


async def test_wait_for_work_wakes_on_enqueue(cb: RedisBackend) -> None:
    waiter = asyncio.create_task(cb.wait_for_work(["x", "y"], 5.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    t0 = time.monotonic()
    await cb.enqueue([job(queue="y")])
    await asyncio.wait_for(waiter, 1.0)
    assert time.monotonic() - t0 < 0.5


async def test_wait_and_claim_blocking__on_a_cluster__job_leased_to_the_waiting_thread(cb: RedisBackend) -> None:
    waiter = asyncio.ensure_future(asyncio.to_thread(cb.wait_and_claim_blocking, ["default"], 5.0, 4, "w"))
    await asyncio.sleep(0.05)
    [(stored, _)] = await cb.enqueue([job()])
    leases = await asyncio.wait_for(waiter, 2.0)
    assert leases is not None and [lease.job.id for lease in leases] == [stored.id]
    assert leases[0].job.status is Status.RUNNING


async def test_scripts_reload_after_script_flush(cb: RedisBackend) -> None:
    await cb.r.script_flush()
    [(stored, created)] = await cb.enqueue([job()])
    assert created and stored.status == "queued"


async def test_unreachable_cluster_is_backend_unavailable() -> None:
    b = create_backend("redis+cluster://127.0.0.1:1/?prefix=nowhere")
    with pytest.raises(BackendUnavailable, match=r"redis cluster at 127\.0\.0\.1:1 is unreachable"):
        await b.open()


def test_cluster_urls() -> None:
    b = create_backend("rediss+cluster://u:pw@node1:7000/?prefix=app")
    assert isinstance(b, RedisBackend) and b.cluster and b.prefix == "app"
    plain = create_backend("redis://127.0.0.1:6379/0")
    assert isinstance(plain, RedisBackend) and not plain.cluster
    with pytest.raises(ConfigurationError, match="only database 0"):
        create_backend("redis+cluster://node1:7000/3")


async def test_sync_enqueue__on_a_cluster__stored_and_leased(cb: RedisBackend) -> None:
    await cb.r.script_flush()  # a node that never saw the enqueue script: it is loaded on demand
    first, second = job(), job(queue="media")

    stored = await asyncio.to_thread(cb.enqueue_blocking, [first, second])

    assert [(s.id, created) for s, created in stored] == [(first.id, True), (second.id, True)]
    assert [lease.job.id for lease in await cb.claim(["default", "media"], 5, "w", time.time())] == [
        first.id, second.id]
    cb.close_blocking()


async def test_setup_warnings__on_a_cluster__the_slots_primary_is_asked(cb: RedisBackend) -> None:
    warnings = await cb.setup_warnings()  # the test cluster runs with appendonly no and no save points
    assert len(warnings) == 1 and warnings[0].startswith("redis cluster at 127.0.0.1:"), warnings
    assert warnings[0].endswith("keeps nothing on disk (appendonly no, no save points): a Redis restart loses every "
                                "job; turn on AOF (appendonly yes)")
