"""A tiny TCP proxy for fault injection: forwards to a real service and can be cut and restored.

Runs an asyncio loop in a daemon thread, so synchronous tests drive it with plain calls::

    proxy = TcpProxy("127.0.0.1", 6379).start()   # listens on 127.0.0.1:<proxy.port>
    proxy.cut()        # close every forwarded connection (RST) and refuse new ones
    proxy.restore()    # listen again on the same address and port
    proxy.freeze()     # a silent network: connections stay open, bytes are held (no reset)
    proxy.thaw()       # pass the held bytes on, and the rest
    proxy.stop()

``cut()`` aborts both sides of each connection (the client sees a reset, as when a server dies
or a firewall rejects the flow) and closes the listening socket, so new connections get
``ECONNREFUSED`` at once until ``restore()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TcpProxy:
    """Forward ``listen_host:listen_port`` → ``target_host:target_port``, with a switch."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = listen_host
        self.port = listen_port
        self.accepted = 0  #: connections accepted over the proxy's life
        self.refused_while_cut = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-proxy-{target_port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._cut = False
        self._flowing = asyncio.Event()  #: cleared while frozen
        self._flowing.set()

    # -- control (any thread) -------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def cut(self) -> None:
        """Close every forwarded connection and refuse new ones."""
        self._call(self._cut_now())

    def restore(self) -> None:
        """Accept and forward connections again (same address and port)."""
        self._call(self._restore_now())

    def freeze(self) -> None:
        """Hold every byte in both directions, and new connections, without closing anything: an
        engine that hangs, or a path that drops packets while the kernel still answers keepalives."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.thaw()  # let held pumps see their closed connections and end
        with contextlib.suppress(Exception):
            self._call(self._cut_now())
        with contextlib.suppress(Exception):
            self._call(self._end_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- the loop side --------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True,
                                                  family=socket.AF_INET)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut_now(self) -> None:
        self._cut = True
        server, self._server = self._server, None
        if server is not None:
            server.close()  # the listening socket goes away: new connects are refused
        for client, upstream in list(self._conns):
            for w in (client, upstream):
                if w is not None:
                    w.transport.abort()
        self._conns.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _end_tasks(self) -> None:
        """Cancel what still runs on the loop (pumps of connections it aborted), before it stops."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _restore_now(self) -> None:
        self._cut = False
        if self._server is None:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused_while_cut += 1
            writer.transport.abort()
            return
        self.accepted += 1
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        entry = (writer, up_writer)
        self._conns.add(entry)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._conns.discard(entry)
            for w in (writer, up_writer):
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()
