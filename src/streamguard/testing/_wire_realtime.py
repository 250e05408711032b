"""The test upstream's WebSocket APIs: OpenAI Realtime (``/v1/realtime``, ``realtime.connect``)
and the Responses API in WebSocket mode (``/v1/responses``, ``responses.connect``).

They behave as the documented server does: a session outlives each response; a response, once
asked for (``response.create``), generates on the upstream's clock until it is done or the
client sends ``response.cancel``, whether or not the client reads; when the socket closes the
server stops generating. Each response is one ``RequestRecord`` (``api`` ``realtime`` or
``responses.ws``, ``stream`` True) with its own token times, so the bleed of a socket that is
abandoned but left open is measured like an HTTP stream's: ``record.tokens_after(t_stop)``.
Outcomes: ``completed``, ``cancelled`` (``response.cancel``), ``disconnected`` (the socket
closed first), ``shutdown``.

Realtime events: ``session.created`` on connect; per response ``response.created``,
``response.output_item.added``, ``response.content_part.added``, one
``response.output_text.delta`` per token, ``response.output_text.done``, ``...part.done``,
``...item.done`` and ``response.done`` (``status`` ``completed`` or ``cancelled``, with the
usage). Responses WebSocket mode sends the HTTP stream's events (``ResponsesWire``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from streamguard.testing._wire_common import (
    Turn,
    input_tokens_of,
    plan,
    positive_int,
    token_text,
)
from streamguard.testing._wire_openai import ResponsesWire
from streamguard.testing._wire_records import RequestRecord

if TYPE_CHECKING:
    from streamguard.testing._wire_server import App

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

WEBSOCKET_PATHS = {"/v1/realtime": "realtime", "/v1/responses": "responses.ws"}


class _Gone(Exception):
    """The client's socket is closed: nothing more can be sent."""


class Session:
    """One WebSocket connection: at most one response generating at a time, as documented."""

    def __init__(self, app: App, scope: Scope, send: Send) -> None:
        self.app, self.scope, self._send = app, scope, send
        self.api = WEBSOCKET_PATHS[scope["path"]]
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        query = scope.get("query_string", b"").decode()
        self.model = next(
            (p.split("=", 1)[1] for p in query.split("&") if p.startswith("model=")), ""
        )
        self.events = 0
        self.generating: asyncio.Task[None] | None = None
        self.record: RequestRecord | None = None
        self.turn: Turn | None = None
        self.closed = False

    async def send(self, event: dict[str, Any]) -> None:
        if self.closed:
            raise _Gone
        self.events += 1
        try:
            await self._send({"type": "websocket.send", "text": json.dumps(event)})
        except Exception as exc:  # uvicorn raises once the client is gone
            self.closed = True
            raise _Gone from exc

    async def run(self, receive: Receive) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await self._send({"type": "websocket.accept"})
        if self.api == "realtime":
            session = {"id": "sess_up", "object": "realtime.session", "model": self.model}
            await self.send({"type": "session.created", "event_id": "evt_0", "session": session})
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self.stop("disconnected", time.monotonic_ns())
                    return
                text = message.get("text") or (message.get("bytes") or b"").decode()
                event = json.loads(text) if text else {}
                kind = event.get("type")
                if kind == "response.create":
                    await self.start(event)
                elif kind == "response.cancel":
                    await self.cancel()
        except asyncio.CancelledError:
            self.stop("shutdown", None)
            raise
        finally:
            self.closed = True
            if self.generating is not None:
                self.generating.cancel()

    def stop(self, outcome: str, disconnected_ns: int | None) -> None:
        self.closed = self.closed or outcome == "disconnected"
        if self.generating is not None and not self.generating.done():
            self.generating.cancel()
        if self.record is not None:
            self.record._finish(outcome, disconnected_ns=disconnected_ns)

    async def cancel(self) -> None:
        task, record, turn = self.generating, self.record, self.turn
        if task is None or task.done() or record is None or turn is None:
            return
        task.cancel()
        record._finish("cancelled")
        if self.api == "realtime":
            await self.send(self._done(turn, "cancelled"))
        else:
            await self.send({"type": "response.cancelled", "response": {"status": "cancelled"}})

    async def start(self, event: dict[str, Any]) -> None:
        params = event.get("response", event) if self.api == "realtime" else event
        if not isinstance(params, dict):
            params = {}
        if self.generating is not None and not self.generating.done():
            error = {"type": "invalid_request_error", "message": "A response is in progress."}
            await self.send({"type": "error", "error": error})
            return
        up = self.app.up
        requested = positive_int(params.get("max_output_tokens"))
        natural = self.headers.get("x-upstream-tokens")
        n_tokens, finish = plan(
            requested,
            int(natural) if natural is not None else None,
            up.default_max_tokens,
            up.max_tokens_cap,
        )
        now, wall = time.monotonic_ns(), time.time_ns()
        model = str(params.get("model") or self.model)
        record = RequestRecord(
            id=up._next_id(),
            provider="openai",
            api=self.api,
            path=self.scope["path"],
            model=model,
            stream=True,
            max_tokens=requested,
            input_tokens=input_tokens_of(params, "input", "instructions"),
            planned_tokens=n_tokens,
            token_interval=float(self.headers.get("x-upstream-token-interval", up.token_interval)),
            started_ns=now,
            started_wall_ns=wall,
            headers=self.headers,
            body=event,
        )
        up._add_record(record)
        self.record = record
        self.turn = turn = Turn(
            request_id=record.id,
            model=model,
            created=wall // 1_000_000_000,
            input_tokens=record.input_tokens,
            n_tokens=n_tokens,
            finish=finish,
            include_usage=True,
            max_tokens=requested,
        )
        self.generating = asyncio.create_task(self._generate(record, turn))

    async def _generate(self, record: RequestRecord, turn: Turn) -> None:
        wire = ResponsesWire()
        try:
            for frame in self._head(turn, wire):
                await self.send(frame)
            interval_ns = round(record.token_interval * 1e9)
            t_next = time.monotonic_ns()
            for i in range(turn.n_tokens):
                t_next = max(t_next + interval_ns, time.monotonic_ns())
                await asyncio.sleep(max(0, t_next - time.monotonic_ns()) / 1e9)
                if self.closed:
                    return
                record._add_token(time.monotonic_ns())  # generated, whether or not it is read
                text = token_text(i)
                turn.pieces.append(text)
                await self.send(self._delta(turn, wire, i, text))
            for frame in self._tail(turn, wire):
                await self.send(frame)
            record.output_tokens = turn.generated
            record._finish("completed")
        except _Gone:
            record._finish("disconnected", disconnected_ns=time.monotonic_ns())

    # -- events ------------------------------------------------------------------------

    def _head(self, turn: Turn, wire: ResponsesWire) -> list[dict[str, Any]]:
        if self.api != "realtime":
            return [json.loads(_data(frame)) for frame in wire.head(turn)]
        item = self._item(turn, "in_progress", [])
        return [
            {"type": "response.created", "response": self._response(turn, "in_progress")},
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            {
                "type": "response.content_part.added",
                **self._where(turn),
                "part": {"type": "text", "text": ""},
            },
        ]

    def _delta(self, turn: Turn, wire: ResponsesWire, index: int, text: str) -> dict[str, Any]:
        if self.api != "realtime":
            return dict(json.loads(_data(wire.token(turn, index, text))))
        return {"type": "response.output_text.delta", **self._where(turn), "delta": text}

    def _tail(self, turn: Turn, wire: ResponsesWire) -> list[dict[str, Any]]:
        if self.api != "realtime":
            return [json.loads(_data(frame)) for frame in wire.tail(turn)]
        part = {"type": "text", "text": turn.text}
        return [
            {"type": "response.output_text.done", **self._where(turn), "text": turn.text},
            {"type": "response.content_part.done", **self._where(turn), "part": part},
            {
                "type": "response.output_item.done",
                "output_index": 0,
                "item": self._item(turn, "completed", [part]),
            },
            self._done(turn, "completed"),
        ]

    def _done(self, turn: Turn, status: str) -> dict[str, Any]:
        return {"type": "response.done", "response": self._response(turn, status)}

    def _where(self, turn: Turn) -> dict[str, Any]:
        return {
            "response_id": f"resp_up{turn.request_id}",
            "item_id": f"item_up{turn.request_id}",
            "output_index": 0,
            "content_index": 0,
        }

    @staticmethod
    def _item(turn: Turn, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": f"item_up{turn.request_id}",
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def _response(turn: Turn, status: str) -> dict[str, Any]:
        return {
            "id": f"resp_up{turn.request_id}",
            "object": "realtime.response",
            "status": status,
            "output": [],
            "usage": {
                "input_tokens": turn.input_tokens,
                "output_tokens": turn.generated,
                "total_tokens": turn.input_tokens + turn.generated,
            },
        }


def _data(frame: bytes) -> str:
    """The JSON of one SSE frame of the HTTP wire."""
    return next(line[6:] for line in frame.decode().splitlines() if line.startswith("data: "))
