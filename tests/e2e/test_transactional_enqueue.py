"""PostgreSQL: a job enqueued inside the caller's transaction exists iff the caller commits."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from conveyor import Context, Conveyor
from conveyor.core.errors import ConfigurationError

DSN = "postgresql://postgres@127.0.0.1:5432/test"


def test_enqueue_in_transaction__rollback_leaves_no_job_commit_keeps_it(tmp_path):
    schema = f"tx_{uuid.uuid4().hex[:10]}"
    app = Conveyor(f"{DSN}?schema={schema}")

    @app.task
    def send_receipt(ctx: Context, order_id: int) -> None: ...

    async def scenario():
        async with await psycopg.AsyncConnection.connect(DSN) as conn:
            await conn.execute("create temporary table orders (id int)")
            async with conn.transaction():
                await conn.execute("insert into orders values (1)")
                kept = await app.enqueue_in_transaction(conn, send_receipt, (1,))
            try:
                async with conn.transaction():
                    await conn.execute("insert into orders values (2)")
                    dropped = await app.enqueue_in_transaction(conn, send_receipt, (2,))
                    raise RuntimeError("the order failed")
            except RuntimeError:
                pass
        found_kept = await app.get_job_async(kept.id)
        found_dropped = await app.get_job_async(dropped.id)
        backend = await app.backend()
        await backend.drop()  # type: ignore[attr-defined]
        await backend.close()
        return found_kept, found_dropped

    kept, dropped = asyncio.run(scenario())
    assert kept is not None and kept.job.args == [1]
    assert dropped is None


def test_enqueue_in_transaction__other_backends_say_why_not(tmp_path):
    app = Conveyor(f"sqlite:///{tmp_path}/t.db")

    @app.task
    def noop(ctx: Context) -> None: ...

    async def scenario():
        try:
            await app.enqueue_in_transaction(object(), noop)
        finally:
            await (await app.backend()).close()

    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        asyncio.run(scenario())


def test_enqueue_in_transaction__a_sync_connection__says_what_it_needs():
    schema = f"tx_{uuid.uuid4().hex[:10]}"
    app = Conveyor(f"{DSN}?schema={schema}")

    @app.task
    def noop(ctx: Context) -> None: ...

    async def scenario():
        try:
            with psycopg.connect(DSN) as conn:  # a Django/Flask-style blocking connection
                await app.enqueue_in_transaction(conn, noop)
        finally:
            backend = await app.backend()
            await backend.drop()  # type: ignore[attr-defined]
            await backend.close()

    with pytest.raises(ConfigurationError, match=r"needs a psycopg\.AsyncConnection, not Connection"):
        asyncio.run(scenario())
