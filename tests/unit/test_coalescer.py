"""Coalescer: concurrent coroutines share one send, each gets its own outcome, none hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from conveyor.backends.coalescer import Coalescer

WAIT = 5.0  # every wait of these tests is bounded


class Sender:
    """``send`` that records its batches; the first one is held until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.first_started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold_first:
            self.release.set()

    async def __call__(self, subs: Sequence[str]) -> list[str | BaseException]:
        self.batches.append(list(subs))
        if len(self.batches) == 1:
            self.first_started.set()
            await asyncio.wait_for(self.release.wait(), WAIT)
        if "explode" in subs:
            raise ConnectionError("engine gone")
        return [ValueError(f"bad {s}") if s.startswith("bad") else s.upper() for s in subs]


async def outcome(coalescer: Coalescer[str, str], sub: str) -> object:
    try:
        return await coalescer.submit(sub)
    except Exception as exc:
        return exc


async def test_a_lone_caller_sends_at_once_on_its_own_task() -> None:
    send = Sender()
    coalescer = Coalescer(send, size=lambda s: 1)
    assert await coalescer.submit("a") == "A"
    assert await coalescer.submit("b") == "B"
    assert send.batches == [["a"], ["b"]]


async def test_callers_arriving_during_a_send__share_the_next_one__each_gets_its_own_outcome() -> None:
    send = Sender(hold_first=True)
    coalescer = Coalescer(send, size=lambda s: 1)
    first = asyncio.create_task(outcome(coalescer, "first"))
    await asyncio.wait_for(send.first_started.wait(), WAIT)
    later = [asyncio.create_task(outcome(coalescer, s)) for s in ("b", "bad1", "c")]
    await asyncio.sleep(0)
    send.release.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later), WAIT)
    assert results[0] == "FIRST"
    assert results[1] == "B" and results[3] == "C"
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad bad1"  # its own mistake only
    assert send.batches == [["first"], ["b", "bad1", "c"]]


async def test_a_failed_send_fails_every_caller_of_its_batch__and_the_next_batch_still_goes() -> None:
    send = Sender(hold_first=True)
    coalescer = Coalescer(send, size=lambda s: 1)
    first = asyncio.create_task(outcome(coalescer, "first"))
    await asyncio.wait_for(send.first_started.wait(), WAIT)
    doomed = [asyncio.create_task(outcome(coalescer, s)) for s in ("explode", "x")]
    await asyncio.sleep(0)
    send.release.set()
    results = await asyncio.wait_for(asyncio.gather(first, *doomed), WAIT)
    assert results[0] == "FIRST"
    assert all(isinstance(r, ConnectionError) for r in results[1:])
    assert await asyncio.wait_for(coalescer.submit("after"), WAIT) == "AFTER"


async def test_a_batch_holds_at_most_the_limit__a_big_submission_is_never_split() -> None:
    send = Sender(hold_first=True)
    coalescer = Coalescer(send, size=len, limit=5)
    first = asyncio.create_task(outcome(coalescer, "a"))
    await asyncio.wait_for(send.first_started.wait(), WAIT)
    later = [asyncio.create_task(outcome(coalescer, s)) for s in ("bb", "ccc", "dddddddd", "e")]
    await asyncio.sleep(0)
    send.release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), WAIT)
    assert send.batches == [["a"], ["bb", "ccc"], ["dddddddd"], ["e"]]


async def test_a_caller_cancelled_while_it_waits_is_left_out_of_the_send() -> None:
    send = Sender(hold_first=True)
    coalescer = Coalescer(send, size=lambda s: 1)
    first = asyncio.create_task(outcome(coalescer, "first"))
    await asyncio.wait_for(send.first_started.wait(), WAIT)
    gone = asyncio.create_task(coalescer.submit("gone"))
    kept = asyncio.create_task(outcome(coalescer, "kept"))
    await asyncio.sleep(0)
    gone.cancel()
    send.release.set()
    assert await asyncio.wait_for(kept, WAIT) == "KEPT"
    await first
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert send.batches == [["first"], ["kept"]]


async def test_a_lone_callers_failed_send_raises_in_it() -> None:
    coalescer = Coalescer(Sender(), size=lambda s: 1)
    with pytest.raises(ConnectionError):
        await coalescer.submit("explode")
    with pytest.raises(ValueError, match="bad bad2"):
        await coalescer.submit("bad2")
    assert await coalescer.submit("ok") == "OK"
