"""Submissions of concurrent coroutines, sent together while a send is in flight.

The event loop's ``GroupCommit``: the first caller sends at once, on its own (no extra task, no
added wait); callers that arrive while that send is in flight queue up, and as soon as it ends
they go in one send, up to a limit of items. Each caller gets its own result or exception. So an
API server's concurrent single submits cost one round trip, and one durable commit, per batch
rather than per job, while a lone caller pays exactly what it did alone.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

S = TypeVar("S")
R = TypeVar("R")


class Coalescer(Generic[S, R]):
    """Run ``send`` for the submissions of concurrent ``submit`` calls, one send at a time.

    ``send(subs)`` returns, for each submission, its result or the exception to raise in its
    caller; if ``send`` itself raises, every caller of that batch gets the exception. A batch
    holds at most ``limit`` items (``size`` counts a submission's), except that one submission
    is never split. A caller cancelled while it waits is left out of the send.
    """

    def __init__(self, send: Callable[[Sequence[S]], Awaitable[Sequence[R | BaseException]]],
                 size: Callable[[S], int], limit: int = 1000) -> None:
        self._send = send
        self._size = size
        self._limit = limit
        self._busy = False
        self._waiting: collections.deque[tuple[S, asyncio.Future[R]]] = collections.deque()
        self._drainer: asyncio.Task[None] | None = None  #: held: a task nobody references may vanish

    async def submit(self, sub: S) -> R:
        if self._busy:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._waiting.append((sub, future))
            return await future
        self._busy = True
        try:
            outcome = _checked(await self._send([sub]), 1)[0]
        finally:
            if self._waiting:
                self._drainer = asyncio.create_task(self._drain())
            else:
                self._busy = False
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _drain(self) -> None:
        batch: list[tuple[S, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch = self._take_batch()
                if not batch:
                    continue
                try:
                    outcomes = _checked(await self._send([sub for sub, _ in batch]), len(batch))
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        finally:  # cancelled (the loop ends): no caller may wait forever
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()
            self._busy = False

    def _take_batch(self) -> list[tuple[S, asyncio.Future[R]]]:
        """The callers waiting longest, up to the limit; those cancelled meanwhile are dropped."""
        batch: list[tuple[S, asyncio.Future[R]]] = []
        items = 0
        while self._waiting:
            sub, future = self._waiting[0]
            if future.done():
                self._waiting.popleft()
                continue
            items += self._size(sub)
            if batch and items > self._limit:
                break
            batch.append(self._waiting.popleft())
        return batch


def _checked(outcomes: Sequence[R | BaseException], count: int) -> Sequence[R | BaseException]:
    if len(outcomes) != count:  # a bug of send's: fail these callers, never hang the rest
        return [RuntimeError(f"coalescer: {len(outcomes)} outcomes for {count} calls")] * count
    return outcomes


__all__ = ["Coalescer"]
