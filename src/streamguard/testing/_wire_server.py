"""The ASGI application behind ``Upstream``: routing, request parsing, faults, and for each
request an exchange of three tasks: a producer on the upstream's own clock, a sender, and a
listener that ends both the moment the client disconnects."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn

from streamguard.testing._wire_anthropic import MessagesWire, SessionEventsWire
from streamguard.testing._wire_common import Turn, Wire, dumps, plan, token_text
from streamguard.testing._wire_gemini import GenerateContentWire
from streamguard.testing._wire_mistral import MistralChatWire
from streamguard.testing._wire_ollama import ChatWire, GenerateWire
from streamguard.testing._wire_openai import ChatCompletionsWire, CompletionsWire, ResponsesWire
from streamguard.testing._wire_openai_events import (
    AgentSessionWire,
    ImageEditWire,
    ImageWire,
    RunWire,
    TranscriptionWire,
)
from streamguard.testing._wire_realtime import WEBSOCKET_PATHS, Session
from streamguard.testing._wire_records import Fault, RequestRecord

if TYPE_CHECKING:
    from streamguard.testing.upstream import Upstream

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _End:
    """Queue markers from the producer to the sender."""


_COMPLETE, _RESET = _End(), _End()


@dataclass
class _Usage:
    output_tokens: int


# Assistants runs: create_and_run, create, submit_tool_outputs.
_RUN_PATH = re.compile(r"/v1/threads(/[^/]+)?/runs(/[^/]+/submit_tool_outputs)?")
# GET routes: anthropic managed-agent session events (sessions, session threads).
_SESSION_EVENTS_PATH = re.compile(r"/v1/sessions/[^/]+(/events|/threads/[^/]+)/stream")
# openai responses.retrieve(stream=True): the stored response, generated again on the clock.
_RESPONSE_PATH = re.compile(r"/v1/responses/[^/]+")
_AGENT_EVENTS_PATH = re.compile(r"/v1/agents/sessions/[^/]+/events")
_GEMINI_PATH = re.compile(r"/(v1[a-z0-9]*)/models/([^/:]+):(streamGenerateContent|generateContent)")


class Exchange:
    """One request in flight: a producer on the upstream's clock, a sender that writes what was
    produced, and a listener that ends both the moment the client disconnects."""

    def __init__(
        self,
        app: App,
        scope: Scope,
        send: Send,
        record: RequestRecord,
        turn: Turn,
        wire: Wire,
        fault: Fault | None,
    ) -> None:
        self.app, self.scope, self._send, self.record = app, scope, send, record
        self.turn, self.wire, self.fault = turn, wire, fault
        # Unbounded on purpose: generation never waits for the client, as on a real server.
        self.queue: asyncio.Queue[bytes | _End | _Usage] = asyncio.Queue()
        self.outcome: str | None = None
        self.ended = asyncio.Event()
        self.transport = app.transport_for(scope)

    def gone(self) -> bool:
        """Whether the client has gone, even if the server has not told the app yet.

        The transport knows one step before ``http.disconnect`` is delivered: a timer that fires
        in the same loop iteration as the client's FIN must not produce (or send) another
        token.
        """
        if self.outcome is None and self.transport is not None and self.transport.is_closing():
            self.end("disconnected", disconnected_ns=time.monotonic_ns())
        return self.outcome is not None

    def end(self, outcome: str, *, disconnected_ns: int | None = None) -> None:
        """The first end wins; the producer checks ``outcome`` before every token."""
        if self.outcome is None:
            self.outcome = outcome
            self.record._finish(outcome, disconnected_ns=disconnected_ns)
            self.ended.set()

    async def run(self, receive: Receive) -> None:
        tasks = [asyncio.create_task(self._produce()), asyncio.create_task(self._write())]
        listener = asyncio.create_task(self._listen(receive))
        try:
            await self.ended.wait()
        finally:
            for task in tasks:
                task.cancel()
            if self.outcome in ("reset", "shutdown"):
                # Let the server see the aborted connection before the app returns, so it does
                # not complain about a response that was never completed.
                await asyncio.wait([listener], timeout=1.0)
            listener.cancel()
            await asyncio.gather(*tasks, listener, return_exceptions=True)

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.end("disconnected", disconnected_ns=time.monotonic_ns())
                return

    async def _produce(self) -> None:
        turn, wire, fault, stream = self.turn, self.wire, self.fault, self.record.stream
        put = self.queue.put_nowait
        if stream:
            for frame in wire.head(turn):
                put(frame)
        if fault is not None and fault.kind == "slow_first_token":
            await asyncio.sleep(fault.delay)
        fault_at = None
        if fault is not None and fault.kind in ("reset", "stall", "malformed"):
            fault_at = min(fault.after_tokens, turn.n_tokens)
        interval_ns = round(self.record.token_interval * 1e9)
        t0 = t_next = time.monotonic_ns()
        for i in range(turn.n_tokens + 1):
            if fault is not None and i == fault_at:
                if fault.kind == "malformed" and stream:
                    put(wire.malformed())
                elif fault.kind == "malformed":
                    put(b'{"malformed": ')
                    put(_COMPLETE)
                    return
                else:
                    if fault.kind == "stall":
                        await asyncio.sleep(fault.delay)
                    put(_RESET)
                    return
            if i == turn.n_tokens:
                break
            # A fixed schedule keeps the rate exact; a server that fell behind (a busy machine)
            # goes on at its rate instead of bursting to catch up, as a model server would.
            t_next = max(t_next + interval_ns, time.monotonic_ns())
            await asyncio.sleep(max(0, t_next - time.monotonic_ns()) / 1e9)
            if self.gone():
                return
            self.record._add_token(time.monotonic_ns())
            text = token_text(i)
            turn.pieces.append(text)
            if stream:
                put(wire.token(turn, i, text))
        turn.elapsed_ns = time.monotonic_ns() - t0
        if stream:
            for frame in wire.tail(turn):
                put(frame)
            if wire.tail_reports_usage(turn):
                put(_Usage(turn.generated))
        else:
            put(dumps(wire.whole(turn)).encode())
            put(_Usage(turn.generated))
        put(_COMPLETE)

    async def _write(self) -> None:
        stream = self.record.stream
        held: list[bytes] = []  # a non-streaming body is sent whole, when the turn is done
        if stream:
            await self._out(start=self.wire.media_type)
        while self.outcome is None:
            item = await self.queue.get()
            if isinstance(item, _Usage):
                self.record.output_tokens = item.output_tokens
            elif item is _RESET:
                self.end("reset")
                self.abort()
            elif item is _COMPLETE:
                if not stream:
                    await self._out(start="application/json")
                await self._out(body=b"".join(held), more=False)
                self.end("completed")
            elif isinstance(item, bytes) and stream:
                await self._out(body=item, more=True)
            elif isinstance(item, bytes):
                held.append(item)

    async def _out(self, *, start: str | None = None, body: bytes = b"", more: bool = True) -> None:
        if start is not None:
            headers = [(b"content-type", start.encode()), (b"cache-control", b"no-cache")]
            message: dict[str, Any] = {"type": "http.response.start", "status": 200}
            message["headers"] = [*headers, (b"x-request-id", f"up-{self.record.id}".encode())]
            self.record.status = 200
        else:
            message = {"type": "http.response.body", "body": body, "more_body": more}
        if self.gone():
            return
        try:
            await self._send(message)
        except OSError:
            # Servers other than uvicorn report a gone client by failing the send.
            self.end("disconnected", disconnected_ns=time.monotonic_ns())

    def abort(self) -> None:
        """Reset the TCP connection: SO_LINGER 0, then abort, so the peer gets an RST."""
        transport = self.transport
        if transport is None:
            return  # returning without completing makes the server close the connection
        if transport.is_closing():
            return  # the client is gone already
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


async def read_body(receive: Receive) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


def form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """The text fields of a ``multipart/form-data`` body (file parts are skipped). Raises
    ValueError for a body that is not one."""
    boundary = next(
        (p.split("=", 1)[1].strip('"') for p in content_type.split(";") if "boundary=" in p), None
    )
    if not boundary:
        raise ValueError("A multipart/form-data request needs a boundary.")
    fields: dict[str, str] = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("A multipart/form-data part has no header end.")
        disposition = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', disposition)
        if name is not None and "filename=" not in disposition:
            fields[name[1]] = value.removesuffix(b"\r\n").decode()
    return fields


async def respond(
    send: Send, status: int, payload: object, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": dumps(payload).encode()})


class App:
    """The raw ASGI application: routing, request parsing, faults, bookkeeping."""

    def __init__(self, upstream: Upstream) -> None:
        self.up = upstream
        self.server: uvicorn.Server | None = None
        self.active: set[Exchange] = set()
        self.gemini = GenerateContentWire()
        self.routes: dict[str, Wire] = {
            "/v1/chat/completions": ChatCompletionsWire(),
            "/v1/completions": CompletionsWire(),
            "/v1/responses": ResponsesWire(
                incomplete_on_length=upstream.responses_incomplete_on_length
            ),
            "/v1/messages": MessagesWire(),
            "/api/chat": ChatWire(),
            "/api/generate": GenerateWire(),
            "/mistral/v1/chat/completions": MistralChatWire(),
            "/v1/audio/transcriptions": TranscriptionWire(),
            "/v1/images/generations": ImageWire(),
            "/v1/images/edits": ImageEditWire(),
            "/v1/agents/sessions": AgentSessionWire(),
        }
        self.runs = RunWire()
        self.session_events = SessionEventsWire()

    def transport_for(self, scope: Scope) -> asyncio.Transport | None:
        client = scope.get("client")
        connections = self.server.server_state.connections if self.server is not None else ()
        for connection in connections:
            if client is not None and tuple(getattr(connection, "client", ()) or ()) == tuple(
                client
            ):
                transport: asyncio.Transport = connection.transport
                return transport
        return None

    def shutdown(self) -> None:
        for exchange in list(self.active):
            if exchange.outcome is None:
                exchange.end("shutdown")
                exchange.abort()

    def route(self, method: str, path: str) -> tuple[Wire, str | None, bool | None] | None:
        if method == "GET":
            if _SESSION_EVENTS_PATH.fullmatch(path):
                return self.session_events, None, True
            if _RESPONSE_PATH.fullmatch(path):
                return self.routes["/v1/responses"], None, None
            if _AGENT_EVENTS_PATH.fullmatch(path):
                return self.routes["/v1/agents/sessions"], None, True
            return None
        if method != "POST":
            return None
        if path in self.routes:
            return self.routes[path], None, None
        if _RUN_PATH.fullmatch(path):
            return self.runs, None, None
        match = _GEMINI_PATH.fullmatch(path)
        if match is not None:
            return self.gemini, match[2], match[3] == "streamGenerateContent"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            if scope["path"] in WEBSOCKET_PATHS:
                await Session(self, scope, send).run(receive)
            else:
                self.up._note_unmatched(f"WebSocket {scope['path']}")
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        started_ns, started_wall_ns = time.monotonic_ns(), time.time_ns()
        body = await read_body(receive)
        if body is None:
            return
        route = self.route(scope["method"], scope["path"])
        if route is None:
            self.up._note_unmatched(f"{scope['method']} {scope['path']}")
            message = f"The test upstream does not serve {scope['method']} {scope['path']}."
            await respond(send, 404, {"error": {"message": message}})
            return
        wire, path_model, stream_hint = route
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            content_type = headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                payload: Any = form_fields(body, content_type)
            elif scope["method"] == "GET":  # a GET's parameters are its query
                query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
                # ``key[]=a&key[]=b`` (the Stainless SDKs' arrays) -> {"key": ["a", "b"]}
                payload = {k.removesuffix("[]"): v for k, v in query.items()}
            else:
                payload = json.loads(body) if body else {}
            if not isinstance(payload, dict):
                raise ValueError("The request body must be a JSON object.")
            parsed = wire.parse(payload, path_model, stream_hint)
            header_fault = headers.get("x-upstream-fault")
            fault = Fault.parse(header_fault) if header_fault else None
            interval = float(headers.get("x-upstream-token-interval", self.up.token_interval))
            natural = int(headers["x-upstream-tokens"]) if "x-upstream-tokens" in headers else None
            if interval < 0 or (natural is not None and natural < 0):
                raise ValueError("x-upstream-token-interval and x-upstream-tokens must be >= 0.")
        except ValueError as exc:  # includes json.JSONDecodeError
            await respond(send, 400, wire.error(400, str(exc)))
            return
        fault = fault or self.up._next_fault()
        n_tokens, finish = plan(
            parsed.max_tokens, natural, self.up.default_max_tokens, self.up.max_tokens_cap
        )
        record = RequestRecord(
            id=self.up._next_id(),
            provider=wire.provider,
            api=wire.api,
            path=scope["path"],
            model=parsed.model,
            stream=parsed.stream,
            max_tokens=parsed.max_tokens,
            input_tokens=parsed.input_tokens,
            planned_tokens=n_tokens,
            token_interval=interval,
            started_ns=started_ns,
            started_wall_ns=started_wall_ns,
            fault=fault,
            headers=headers,
            body=payload,
        )
        self.up._add_record(record)
        if fault is not None and fault.kind == "http_error":
            record.status = fault.status
            extra = [(b"retry-after", b"0")] if fault.status == 429 else []
            message = f"Injected upstream fault: HTTP {fault.status}."
            await respond(send, fault.status, wire.error(fault.status, message), extra)
            record._finish("http_error")
            return
        turn = Turn(
            request_id=record.id,
            model=parsed.model,
            created=started_wall_ns // 1_000_000_000,
            input_tokens=parsed.input_tokens,
            n_tokens=n_tokens,
            finish=finish,
            include_usage=parsed.include_usage,
            max_tokens=parsed.max_tokens,
        )
        exchange = Exchange(self, scope, send, record, turn, wire, fault)
        self.active.add(exchange)
        try:
            await exchange.run(receive)
        finally:
            self.active.discard(exchange)
            exchange.end("shutdown")  # no-op unless the server cancelled the request
