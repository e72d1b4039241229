"""arq with its defaults (``max_jobs`` 10, ``poll_delay`` 0.5 s, results kept 1 h).

arq re-runs a job whose worker died once its in-progress key expires (job_timeout + a
margin), with ``max_tries`` 5: its default already is its reliable setting."""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings

from bench.peers._record import arecord, redis_url

DB = 4


async def noop(ctx: dict[str, Any], t: float = 0.0) -> None:
    await arecord(t, DB)


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(redis_url(DB))
    poll_delay = 0.5  # arq's default, stated for compare.py's latency sampling


WORKER = ["arq", "bench.peers.arq_tasks.WorkerSettings"]


async def open_pool() -> Any:
    from arq import create_pool

    return await create_pool(WorkerSettings.redis_settings)


async def enqueue(pool: Any, t: float = 0.0) -> None:
    await pool.enqueue_job("noop", t)
