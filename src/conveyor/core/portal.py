"""The one sync adapter: run the async core from synchronous code on a private event loop."""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    """A daemon thread with its own event loop; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="conveyor-portal", daemon=True)
                thread.start()
                self._loop = loop
                atexit.register(self.stop)
            return self._loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the portal's loop and return its result (or raise its error)."""
        loop = self.loop
        try:
            if asyncio.get_running_loop() is loop:
                coro.close()
                raise RuntimeError("Portal.call from inside the portal's own loop would deadlock")
        except RuntimeError as exc:
            if "deadlock" in str(exc):
                raise
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def stop(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
