"""The ASGI application behind ``Upstream``: routing, request parsing, faults; each request
then runs as an ``Exchange`` (``_wire_exchange``: a producer on the upstream's own clock, a
sender, and a listener that ends both the moment the client disconnects)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import uvicorn

from streamguard.testing._wire_anthropic import MessagesWire, SessionEventsWire
from streamguard.testing._wire_common import Turn, Wire, dumps, plan
from streamguard.testing._wire_exchange import Exchange, Receive, Scope, Send
from streamguard.testing._wire_gemini import GenerateContentWire
from streamguard.testing._wire_mistral import (
    MistralChatWire,
    MistralConversationWire,
    MistralFimWire,
)
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


# Assistants runs: create_and_run, create, submit_tool_outputs.
_RUN_PATH = re.compile(r"/v1/threads(/[^/]+)?/runs(/[^/]+/submit_tool_outputs)?")
# GET routes: anthropic managed-agent session events (sessions, session threads).
_SESSION_EVENTS_PATH = re.compile(r"/v1/sessions/[^/]+(/events|/threads/[^/]+)/stream")
# openai responses.retrieve(stream=True): the stored response, generated again on the clock.
_RESPONSE_PATH = re.compile(r"/v1/responses/[^/]+")
# openai responses.cancel: stops a background response.
_CANCEL_PATH = re.compile(r"/v1/responses/([^/]+)/cancel")
_CONVERSATION_PATH = re.compile(r"/mistral/v1/conversations/[^/]+(/restart)?")
_AGENT_EVENTS_PATH = re.compile(r"/v1/agents/sessions/[^/]+/events")
_GEMINI_PATH = re.compile(r"/(v1[a-z0-9]*)/models/([^/:]+):(streamGenerateContent|generateContent)")


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
            "/mistral/v1/agents/completions": MistralChatWire(),
            "/mistral/v1/fim/completions": MistralFimWire(),
            "/mistral/v1/conversations": MistralConversationWire(),
            "/v1/agents/sessions": AgentSessionWire(),
        }
        self.runs = RunWire()
        self.session_events = SessionEventsWire()
        # Background responses by response id, while generating and after (a cancel of a
        # finished one answers its final state, as OpenAI does).
        self.background: dict[str, Exchange] = {}

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
        if _CONVERSATION_PATH.fullmatch(path):  # append to, or restart, a conversation
            return self.routes["/mistral/v1/conversations"], None, None
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
        cancel = _CANCEL_PATH.fullmatch(scope["path"]) if scope["method"] == "POST" else None
        if cancel is not None:
            await self._cancel(send, cancel[1])
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
            background=parsed.background,
        )
        exchange = Exchange(self, scope, send, record, turn, wire, fault)
        if isinstance(wire, ResponsesWire) and turn.background:
            self.background[wire.response_id(turn)] = exchange
        self.active.add(exchange)
        try:
            await exchange.run(receive)
        finally:
            self.active.discard(exchange)
            exchange.end("shutdown")  # no-op unless the server cancelled the request

    async def _cancel(self, send: Send, response_id: str) -> None:
        """``POST /v1/responses/{id}/cancel``: stop a background response; answer it."""
        wire = self.routes["/v1/responses"]
        assert isinstance(wire, ResponsesWire)
        exchange = self.background.get(response_id)
        if exchange is None:
            message = f"No background response with id {response_id!r}."
            await respond(send, 404, wire.error(404, message))
            return
        exchange.end("cancelled")
        turn = exchange.turn
        body = wire.cancelled(turn) if exchange.outcome == "cancelled" else wire.whole(turn)
        await respond(send, 200, body)
