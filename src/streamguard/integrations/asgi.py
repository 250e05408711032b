"""``StreamGuardMiddleware``: when the HTTP or WebSocket client leaves, its streams stop.

Pure ASGI, for FastAPI, Starlette or any ASGI app::

    app = FastAPI()
    app.add_middleware(StreamGuardMiddleware)

Streams opened while serving a request belong to it. The middleware listens for the client
itself, so ``http.disconnect``, ``websocket.disconnect`` or a failed send stops them at once
as ``client_disconnect``, without waiting for the application's generator to notice (a sync
relay blocked in a read, an async relay busy with per-chunk work). A unit counts as consumed
once a send carrying it completed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from streamguard.integrations._request import RequestStreams, reset

__all__ = ["StreamGuardMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DISCONNECT = {"http": "http.disconnect", "websocket": "websocket.disconnect"}
_BODY = {"http.response.body", "websocket.send"}


class StreamGuardMiddleware:
    """Ties the streams of a request to its client; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in _DISCONNECT:
            await self.app(scope, receive, send)
            return
        streams = RequestStreams()
        token = streams.set()
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        done = asyncio.Event()
        pump = asyncio.create_task(_pump(kind, receive, inbox, streams, done))

        async def app_receive() -> Message:
            return await inbox.get()

        async def app_send(message: Message) -> None:
            try:
                await send(message)
            except BaseException:
                streams.client_gone("sending to the client failed")
                raise
            mtype = message["type"]
            if mtype in _BODY:
                streams.sent()
                if mtype == "http.response.body" and not message.get("more_body", False):
                    done.set()
                    streams.finished()
            elif mtype == "websocket.close":
                done.set()
                streams.client_gone("the WebSocket was closed by the server")

        try:
            await self.app(scope, app_receive, app_send)
        finally:
            done.set()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            reset(token)


async def _pump(
    kind: str,
    receive: Receive,
    inbox: asyncio.Queue[Message],
    streams: RequestStreams,
    done: asyncio.Event,
) -> None:
    """Read the client's messages as they come, so a disconnect is seen the moment it happens."""
    disconnect = _DISCONNECT[kind]
    while True:
        message = await receive()
        if message["type"] == disconnect and not done.is_set():
            streams.client_gone(f"{disconnect} from the client")
        inbox.put_nowait(message)
        if message["type"] == disconnect:
            return
