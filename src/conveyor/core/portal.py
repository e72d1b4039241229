"""The one sync adapter: run the async core from synchronous code.

A plain thread gets an event loop of its own and runs the coroutine on it directly (no
thread hop: a sync ``enqueue`` costs about what an async one does). A thread that ended hands its
loop, and the connections opened on it, to the next new thread (a server that starts a thread
per request would otherwise leave a loop and a connection behind per request). Code that is already
inside a running loop (a sync helper called from an async task) is served by a private
loop in a daemon thread instead, since a loop cannot be re-entered; so is every call of an
app on RabbitMQ, whose client reads and reconnects in tasks that need a loop between calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    """``call(coro)`` runs a coroutine to completion from synchronous code."""

    def __init__(self, always_in_background: bool = False) -> None:
        #: Every call on the background loop, which runs between calls too (for engines whose
        #: client works in tasks of its own).
        self._always_in_background = always_in_background
        self._local = threading.local()
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        #: each thread's own loop and the thread it serves (a loop whose thread ended is reused)
        self._loops: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` and return its result (or raise its error)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._always_in_background:
                return self._in_background(coro, timeout)
            loop = self._own_loop()
            return loop.run_until_complete(coro if timeout is None else asyncio.wait_for(coro, timeout))
        return self._in_background(coro, timeout)

    def owns(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether ``loop`` is one of this portal's (the background loop, or a thread's own)."""
        return loop is self._thread_loop or any(loop is own for own, _ in self._loops)

    def _in_background(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._background_loop())
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()  # a timeout, or Ctrl-C in the caller: stop the call too
            raise

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None or loop.is_closed():
            loop = self._local.loop = self._loop_for(threading.current_thread())
        return loop

    def _loop_for(self, thread: threading.Thread) -> asyncio.AbstractEventLoop:
        """The loop of a thread that ended (it runs no more: a thread's call returns only once its
        loop stopped), else a new one. Never the main thread's: at exit it counts as ended before
        the ``atexit`` calls it still makes (and the app's own close) run on its loop."""
        main = threading.main_thread()
        with self._lock:
            for i, (loop, owner) in enumerate(self._loops):
                if owner is not main and not owner.is_alive() and not loop.is_closed():
                    self._loops[i] = (loop, thread)
                    return loop
            loop = asyncio.new_event_loop()
            self._loops.append((loop, thread))
            return loop

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._thread_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=_run_until_stopped, args=(loop,), name="conveyor-portal", daemon=True).start()
                self._thread_loop = loop
            return self._thread_loop

    def stop(self) -> None:
        """Stop (and so close) the background loop and close the idle loops of threads. (At exit the app calls
        this once it has closed its backends on them: a loop stopped first would leave that close
        waiting, then warn that it never ran.)"""
        with self._lock:
            loop, self._thread_loop = self._thread_loop, None
            loops, self._loops = self._loops, []
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        for own, _ in loops:
            if not own.is_running() and not own.is_closed():
                own.close()


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """The background thread: run ``loop`` until ``stop``, then close it (a loop left open
    warns "unclosed event loop" when it is collected)."""
    try:
        loop.run_forever()
    finally:
        loop.close()
