"""A process that used Conveyor and then forks (multiprocessing, a pre-forking server): parent
and child each keep working on connections of their own, on every engine with a network."""

from __future__ import annotations

import multiprocessing
import traceback
import uuid
from typing import Any

import pytest

from conveyor import Context, Conveyor

URLS = {
    "redis": "redis://127.0.0.1:6379/0?prefix=forktest_{ns}",
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test?schema=forktest_{ns}",
}


def _make_app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.task
    def noop(ctx: Context) -> None:
        return None

    return app


def _round_trips(app: Conveyor, n: int) -> int:
    """Enqueue ``n`` jobs, reading each back: how many came back wrong."""
    wrong = 0
    for _ in range(n):
        handle = app.enqueue("noop")
        got = app.get_job(handle.id)
        wrong += got is None or got.id != handle.id
    return wrong


def _in_child(app: Conveyor, out: Any) -> None:
    try:
        out.put(_round_trips(app, 100))
    except BaseException:
        out.put(traceback.format_exc())


@pytest.mark.parametrize("engine", list(URLS))
def test_fork_after_use__parent_and_child_each_keep_working(engine: str) -> None:
    app = _make_app(URLS[engine].format(ns=uuid.uuid4().hex[:10]))
    try:
        assert _round_trips(app, 3) == 0  # the parent's loop, async backend and sync client exist now
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_in_child, args=(app, out))
        child.start()
        try:
            assert _round_trips(app, 100) == 0  # while the child does the same
            assert out.get(timeout=60) == 0
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
    finally:
        async def drop() -> None:
            backend = await app.backend()
            await backend.drop()  # type: ignore[attr-defined]

        app.portal.call(drop())
        app.close()
