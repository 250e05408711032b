"""FastAPI helpers: an SSE relay, a WebSocket relay and a cancel endpoint for guarded streams.

Use them with ``StreamGuardMiddleware`` so a client that leaves stops its streams at once::

    app = FastAPI()
    app.add_middleware(StreamGuardMiddleware)
    app.include_router(cancel_router())

    @app.post("/chat")
    def chat(body: Ask):
        stream = client.chat.completions.create(..., stream=True)
        return sse_response(stream)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from streamguard.exceptions import MissingExtraError

try:
    from starlette.concurrency import iterate_in_threadpool
    from starlette.responses import StreamingResponse
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ModuleNotFoundError:  # one line naming the extra, not a traceback from deep inside
    raise MissingExtraError("streamguard.integrations.fastapi", "fastapi") from None

from streamguard._engine.handle import cancel_stream
from streamguard.exceptions import BudgetExceeded, StreamBlocked, StreamCancelled
from streamguard.providers._base import core_of, handle_of

__all__ = ["cancel_router", "error_event", "sse_response", "websocket_relay"]

ToData = Callable[[Any], Any]


def _text(stream: Any) -> ToData:
    core = core_of(stream) or getattr(stream, "_core", None)
    text_of = getattr(core, "text_of", None)

    def to_data(chunk: Any) -> Any:
        text = text_of(chunk) if text_of is not None else chunk
        return {"text": text} if text else None

    return to_data


def error_event(exc: StreamCancelled) -> dict[str, Any]:
    """The error payload sent when StreamGuard stops a relayed stream (seed 002's shape)."""
    if isinstance(exc, StreamBlocked):
        kind = "content_policy_violation"
    elif isinstance(exc, BudgetExceeded):
        kind = "budget_exceeded"
    else:
        kind = exc.reason
    return {"error": {"type": kind, "message": str(exc), "code": "streaming_terminated"}}


async def _chunks(stream: Any) -> AsyncIterator[Any]:
    if hasattr(stream, "__anext__"):
        async for chunk in stream:
            yield chunk
    else:
        async for chunk in iterate_in_threadpool(stream):
            yield chunk


def sse_response(stream: Any, *, to_data: ToData | None = None) -> StreamingResponse:
    """Relay a guarded stream as Server-Sent Events.

    Events: ``stream`` (``{"stream_id": ...}``, for the cancel endpoint), one ``message`` per
    chunk with text (``to_data(chunk)``; None skips a chunk), then ``done``. When budget or
    policy stops the stream, an ``error`` event carries ``{"error": {"type", "message",
    "code"}}``. The stream id is also in the ``x-streamguard-stream-id`` header.
    """
    handle = handle_of(stream)
    convert = to_data or _text(stream)
    stream_id = handle.stream_id if handle is not None else None

    async def events() -> AsyncIterator[str]:
        if stream_id is not None:
            yield _sse("stream", {"stream_id": stream_id})
        try:
            async for chunk in _chunks(stream):
                data = convert(chunk)
                if data is not None:
                    yield _sse("message", data)
        except StreamCancelled as exc:
            yield _sse("error", error_event(exc))
            return
        yield _sse("done", {"status": "complete"})

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    if stream_id is not None:
        headers["x-streamguard-stream-id"] = stream_id
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def websocket_relay(
    websocket: WebSocket, stream: Any, *, to_data: ToData | None = None
) -> None:
    """Relay a guarded stream over an accepted WebSocket as JSON messages.

    Sends ``{"type": "stream", "stream_id"}``, then ``{"type": "text", "content"}`` per chunk,
    then ``{"type": "done"}``; a ``{"type": "cancel"}`` message from the client stops the stream
    (reason ``manual``) and is answered with ``{"type": "cancelled"}``.
    """
    handle = handle_of(stream)
    convert = to_data or _text(stream)
    if handle is not None:
        await websocket.send_json({"type": "stream", "stream_id": handle.stream_id})

    async def listen() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive_json()
                if message.get("type") == "cancel" and handle is not None:
                    handle.cancel("manual", "cancelled by the WebSocket client")

    listener = asyncio.create_task(listen())
    try:
        async for chunk in _chunks(stream):
            data = convert(chunk)
            if data is not None:
                await websocket.send_json({"type": "text", "content": data.get("text", data)})
        await websocket.send_json({"type": "done"})
    except StreamCancelled as exc:
        if exc.reason == "manual":
            await websocket.send_json({"type": "cancelled", "stream_id": exc.stream_id})
        else:
            await websocket.send_json({"type": "error", **error_event(exc)})
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


def cancel_router(prefix: str = "") -> Any:
    """An APIRouter with ``POST {prefix}/streams/{stream_id}/cancel`` (reason ``manual``).

    With ``STREAMGUARD_REDIS_URL`` set the cancel reaches the stream in any replica.
    """
    try:
        from fastapi import APIRouter, HTTPException
    except ModuleNotFoundError:
        raise MissingExtraError("cancel_router()", "fastapi") from None

    router = APIRouter(prefix=prefix)

    @router.post("/streams/{stream_id}/cancel")
    def cancel(stream_id: str) -> dict[str, Any]:
        if not cancel_stream(stream_id, "manual", "cancelled through the cancel endpoint"):
            raise HTTPException(404, f"No open stream {stream_id} (finished, or unknown).")
        return {"stream_id": stream_id, "cancelled": True}

    return router
