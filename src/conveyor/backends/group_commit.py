"""Submissions from many threads, sent together by one of them (group commit).

A sync ``enqueue`` costs one round trip to the engine. When many threads enqueue at once (a
Django or Flask app under load), each paying its own round trip, they mostly wait, and fight
over the GIL. ``GroupCommit`` lets them share: the first caller sends its submission at once;
callers that arrive meanwhile queue up, and when the send in flight ends the first of them
sends everything queued in one call. Each caller gets its own result or exception, so one
caller's mistake is not another's. This is the writer queue of LevelDB and RocksDB.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from conveyor.core.errors import BackendUnavailable

S = TypeVar("S")
R = TypeVar("R")


class _Entry(Generic[S, R]):
    __slots__ = ("done", "error", "result", "sub", "taken", "wake")

    def __init__(self, sub: S) -> None:
        self.sub = sub
        self.taken = False  #: in a batch being sent
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None
        #: for a caller that waits: held until its batch ended or it leads the next one (then
        #: released once); a caller that leads at once never needs one
        self.wake: threading.Lock | None = None


class GroupCommit(Generic[S, R]):
    """Run ``send`` for the submissions of concurrent ``submit`` calls, batched.

    ``send(subs)`` returns, for each submission, its result or the exception to raise in its
    caller; if ``send`` itself raises, every caller of that batch gets the exception. A batch
    holds at most ``limit`` items (``size`` counts a submission's), except that one submission
    is never split.
    """

    def __init__(self, send: Callable[[Sequence[S]], Sequence[R | BaseException]],
                 size: Callable[[S], int], limit: int = 1000) -> None:
        self._send = send
        self._size = size
        self._limit = limit
        self._reset()
        _INSTANCES.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        #: callers in arrival order; the batch in flight is at the front until it ends
        self._queue: collections.deque[_Entry[S, R]] = collections.deque()

    def submit(self, sub: S) -> R:
        me: _Entry[S, R] = _Entry(sub)
        with self._lock:
            self._queue.append(me)
            if len(self._queue) > 1:
                me.wake = wake = threading.Lock()
                wake.acquire()
            else:
                wake = None
        if wake is not None:
            try:
                wake.acquire()  # each waiter is woken once: by its batch's end, or to lead
            except BaseException:  # KeyboardInterrupt in the main thread: leave the queue
                self._leave(me)
                raise
            if me.done:
                return self._outcome(me)
        batch = self._take_batch(me)
        try:  # outside the lock: callers arriving meanwhile queue up for the next batch
            outcomes: Sequence[R | BaseException] = self._send([entry.sub for entry in batch])
        except BaseException as exc:
            outcomes = [exc] * len(batch)
        self._finish(batch, outcomes)
        return self._outcome(me, leader=True)

    def _take_batch(self, me: _Entry[S, R]) -> list[_Entry[S, R]]:
        """The leader ``me`` and the callers queued behind it, up to the limit."""
        with self._lock:
            batch = [me]
            me.taken = True
            if len(self._queue) == 1:
                return batch
            items = self._size(me.sub)
            for entry in itertools.islice(self._queue, 1, None):
                items += self._size(entry.sub)
                if items > self._limit:
                    break
                batch.append(entry)
            for entry in batch[1:]:
                entry.taken = True
        return batch

    def _finish(self, batch: list[_Entry[S, R]], outcomes: Sequence[R | BaseException]) -> None:
        """Hand each caller of ``batch`` its outcome, and the next caller the lead."""
        if len(outcomes) != len(batch):  # a bug of send's: fail these callers, never hang the rest
            outcomes = [RuntimeError(f"group commit: {len(outcomes)} outcomes for {len(batch)} calls")] * len(batch)
        with self._lock:
            for entry, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    entry.error = outcome
                else:
                    entry.result = outcome
                entry.done = True
                self._queue.popleft()
            after = self._queue[0] if self._queue else None
        for entry in batch[1:]:
            entry.wake.release()  # type: ignore[union-attr]  # a follower waits: it has one
        if after is not None:
            after.wake.release()  # type: ignore[union-attr]  # it leads the next batch

    def _leave(self, me: _Entry[S, R]) -> None:
        """An interrupted waiter's exit. Sent already: nothing to do (its outcome is dropped).
        Queued: out of the queue. At the front (woken, or about to be, to lead): out, and the
        next caller leads instead."""
        with self._lock:
            if me.taken or me.done:
                return
            front = self._queue[0] is me
            self._queue.remove(me)
            after = self._queue[0] if front and self._queue else None
        if after is not None:
            after.wake.release()  # type: ignore[union-attr]

    @staticmethod
    def _outcome(entry: _Entry[S, R], leader: bool = False) -> R:
        error = entry.error
        if error is None:
            return entry.result  # type: ignore[return-value]
        if leader or isinstance(error, Exception):
            raise error
        # the leader was interrupted (KeyboardInterrupt, SystemExit): that is its own to raise;
        # for the others the fate of the batch is unknown, as after a dropped connection
        raise BackendUnavailable("the enqueue sent with this one was interrupted") from error


#: every GroupCommit of this process, for ``_after_fork``
_INSTANCES: weakref.WeakSet[GroupCommit[Any, Any]] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child: the parent's callers (and a lock one of its threads held) are not
    the child's; without this, a child forked while a parent's send was in flight would wait
    for that send forever."""
    for instance in list(_INSTANCES):
        instance._reset()


os.register_at_fork(after_in_child=_after_fork)
