"""The stall watchdog: a worker whose claim loop hangs exits non-zero and hands its jobs back."""

from __future__ import annotations

import asyncio
import threading
import time

from conveyor import Context, Conveyor
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.core.job import Status
from conveyor.worker import EXIT_STALLED, Worker


class HangingClaims(SQLiteBackend):
    """A real SQLite backend whose claims hang forever once ``hang`` is set (a wedged connection)."""

    hang = threading.Event()

    async def claim(self, queues, limit, worker_id, now):  # type: ignore[no-untyped-def]
        while self.hang.is_set():
            await asyncio.sleep(3600)
        return await super().claim(queues, limit, worker_id, now)


def test_stalled_claim_loop__worker_exits_70_and_hands_back_running_jobs(tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    app = Conveyor(url)
    started = threading.Event()

    @app.task
    def slow(ctx: Context) -> str:
        started.set()
        HangingClaims.hang.set()  # from now on the claim loop is wedged
        time.sleep(1.5)
        return "done"

    job = slow.enqueue()
    worker = Worker(app, backend=HangingClaims(url), scheduler=False, stall_timeout=1.0, heartbeat=0.1)
    t0 = time.monotonic()
    try:
        code = asyncio.run(asyncio.wait_for(worker.run(), 15))
    finally:
        HangingClaims.hang.clear()
    assert started.is_set()
    assert code == EXIT_STALLED
    assert time.monotonic() - t0 < 5
    handed = job.refresh().job
    assert handed.status is Status.QUEUED and handed.deliveries == 0  # ready for another worker at once
    app.close()


def test_event_loop_blocked_past_the_stall_timeout__not_taken_for_a_stalled_claim_loop(tmp_path):
    """A task that blocks the loop holds up the claim loop too; once it returns the worker goes
    on (it exited 70 and handed the jobs back, though nothing had stalled but the task)."""
    app = Conveyor(f"sqlite:///{tmp_path}/w.db")

    @app.task
    async def blocks(ctx: Context) -> str:
        time.sleep(2.5)  # the mistake: blocking code in an async task
        return "done"

    job = blocks.enqueue()
    worker = Worker(app, scheduler=False, burst=True, stall_timeout=1.0, heartbeat=0.1)
    code = asyncio.run(asyncio.wait_for(worker.run(), 20))
    assert code == 0
    assert job.refresh().job.status is Status.SUCCEEDED and job.job.deliveries == 1
    app.close()


class LateClaimReplies(SQLiteBackend):
    """A real SQLite backend whose first claim that leases anything answers 2.5 s late (a loop
    blocked while the reply was on its way)."""

    late = True

    async def claim(self, queues, limit, worker_id, now):  # type: ignore[no-untyped-def]
        leases = await super().claim(queues, limit, worker_id, now)
        if leases and LateClaimReplies.late:
            LateClaimReplies.late = False
            await asyncio.sleep(2.5)
        return leases


def test_claim_reply_later_than_its_lease__not_run_by_a_second_worker_too(tmp_path, caplog):
    """No one heartbeats a lease its worker does not know of yet: one whose claim's reply came
    later than half the lease may have passed to another worker, so it is handed back."""
    url = f"sqlite:///{tmp_path}/w.db"
    app = Conveyor(url)
    app.queue("default", visibility_timeout=2)
    runs = []

    @app.task
    def once(ctx: Context) -> int:
        runs.append(ctx.job.id)
        return len(runs)

    job = once.enqueue()

    async def main() -> list[int]:
        late = Worker(app, backend=LateClaimReplies(url), scheduler=False)
        other = Worker(app, scheduler=False)
        first = asyncio.create_task(late.run())
        await asyncio.sleep(0.5)  # its claim leased the job; the reply is on its way
        second = asyncio.create_task(other.run())  # takes the job up once the lease ran out
        await asyncio.sleep(4.0)
        late.stop()
        other.stop()
        return list(await asyncio.gather(first, second))

    assert asyncio.run(asyncio.wait_for(main(), 20)) == [0, 0]
    stored = job.refresh().job
    assert (stored.status, runs) == (Status.SUCCEEDED, [job.id])  # it ran twice, once per worker
    assert "handed back rather than run it" in caplog.text
    app.close()
