"""``HEAD`` on every ``GET`` route (RFC 9110 §9.3.2: the GET's status and headers, no body).

FastAPI routes answer GET only; a HEAD is routed as a GET here and its body dropped. A
streaming GET (Server-Sent Events) is stopped once its headers went out: the app is told the
client disconnected, so no stream is left running for a response that has no body.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = asyncio.Event()

        async def send_head(message: Message) -> None:
            if ended.is_set():
                return
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body":
                ended.set()
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def receive_until_ended() -> Message:
            if ended.is_set():
                return {"type": "http.disconnect"}
            request = asyncio.ensure_future(receive())
            end = asyncio.ensure_future(ended.wait())
            await asyncio.wait({request, end}, return_when=asyncio.FIRST_COMPLETED)
            if request.done():
                end.cancel()
                return request.result()
            request.cancel()
            return {"type": "http.disconnect"}

        await self.app(dict(scope, method="GET"), receive_until_ended, send_head)
