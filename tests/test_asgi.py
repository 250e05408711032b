"""A client that leaves stops the upstream, in a real ASGI app (uvicorn, FastAPI, real SDKs)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from fastapi import FastAPI, WebSocket
from starlette.responses import StreamingResponse

import streamguard
from _asgi_server import serve
from streamguard._receipts.signing import HmacSigner
from streamguard.integrations.asgi import StreamGuardMiddleware
from streamguard.integrations.fastapi import cancel_router, sse_response, websocket_relay
from streamguard.testing import Upstream
from streamguard.testing.sinks import InMemoryReceiptSink

PROMPT = [{"role": "user", "content": "relay this"}]
MAX_TOKENS = 300


class SentCounter:
    """Outermost middleware: counts SSE message events the server really sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counting_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                self.sent += message.get("body", b"").count(b"event: message")

        await self.app(scope, receive, counting_send)


def _text(provider: str, chunk: Any) -> str | None:
    if provider == "openai":
        return chunk.choices[0].delta.content if chunk.choices else None
    if provider == "anthropic":
        return getattr(getattr(chunk, "delta", None), "text", None)
    return chunk.message.content or None


def _sync_stream(provider: str, up: Upstream) -> Any:
    if provider == "openai":
        return openai.OpenAI(
            base_url=up.openai_base_url, api_key="k", max_retries=0
        ).chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=MAX_TOKENS, stream=True
        )
    if provider == "anthropic":
        return anthropic.Anthropic(
            base_url=up.anthropic_base_url, api_key="k", max_retries=0
        ).messages.create(
            model="claude-sonnet-4-0", messages=PROMPT, max_tokens=MAX_TOKENS, stream=True
        )
    return ollama.Client(host=up.ollama_host).chat(
        model="llama3", messages=PROMPT, stream=True, options={"num_predict": MAX_TOKENS}
    )


async def _async_stream(provider: str, up: Upstream) -> Any:
    if provider == "openai":
        client: Any = openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
        return await client.chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=MAX_TOKENS, stream=True
        )
    if provider == "anthropic":
        client = anthropic.AsyncAnthropic(
            base_url=up.anthropic_base_url, api_key="k", max_retries=0
        )
        return await client.messages.create(
            model="claude-sonnet-4-0", messages=PROMPT, max_tokens=MAX_TOKENS, stream=True
        )
    return await ollama.AsyncClient(host=up.ollama_host).chat(
        model="llama3", messages=PROMPT, stream=True, options={"num_predict": MAX_TOKENS}
    )


def build_app(up: Upstream) -> tuple[Any, SentCounter]:
    app = FastAPI()
    app.add_middleware(StreamGuardMiddleware)
    app.include_router(cancel_router())

    @app.get("/relay/{provider}/sync")
    def relay_sync(provider: str) -> StreamingResponse:
        # The classic relay: a sync SDK client, per-chunk work in a sync generator.
        stream = _sync_stream(provider, up)

        def events() -> Iterator[str]:
            for chunk in stream:
                time.sleep(0.002)  # per-chunk work
                text = _text(provider, chunk)
                if text:
                    yield f"event: message\ndata: {json.dumps({'text': text})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/relay/{provider}/async")
    async def relay_async(provider: str) -> StreamingResponse:
        stream = await _async_stream(provider, up)

        async def events() -> AsyncIterator[str]:
            async for chunk in stream:
                await asyncio.sleep(0.002)  # per-chunk work
                text = _text(provider, chunk)
                if text:
                    yield f"event: message\ndata: {json.dumps({'text': text})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/sse")
    def sse() -> Any:
        return sse_response(_sync_stream("openai", up))

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_json()
        await websocket_relay(websocket, await _async_stream("anthropic", up))
        await websocket.close()

    counter = SentCounter(app)
    return counter, counter


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.01) as up:
        yield up


@pytest.fixture(scope="module")
def sink() -> InMemoryReceiptSink:
    return InMemoryReceiptSink()


@pytest.fixture(scope="module")
def server(upstream: Upstream, sink: InMemoryReceiptSink) -> Iterator[tuple[str, SentCounter]]:
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"), stall_timeout=30)
    app, counter = build_app(upstream)
    try:
        with serve(app) as url:
            yield url, counter
    finally:
        streamguard.uninstrument()


def _receipt_for(sink: InMemoryReceiptSink, before: int, timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(sink.receipts) > before:
            return sink.receipts[before]
        time.sleep(0.01)
    raise AssertionError("no receipt")


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_client_disconnect_stops_upstream_within_100ms(
    upstream, sink, server, provider, mode
) -> None:
    url, counter = server
    counter.sent = 0
    receipts_before = len(sink.receipts)
    requests_before = len(upstream.requests)
    events = 0
    with (
        httpx.Client(timeout=10) as http,
        http.stream("GET", f"{url}/relay/{provider}/{mode}") as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data:"):
                events += 1
                if events == 10:
                    break
        t_stop = time.monotonic_ns()
    record = upstream.requests[requests_before]
    assert record.wait_done(3)
    assert record.disconnected_ns is not None, record.outcome
    assert (record.disconnected_ns - t_stop) / 1e6 <= 100
    assert record.tokens_after(t_stop) <= 10  # 100 ms at one token per 10 ms
    receipt = _receipt_for(sink, receipts_before)
    assert (receipt.reason, receipt.category) == ("client_disconnect", "client")
    time.sleep(0.05)
    assert receipt.tokens.consumed == counter.sent  # units whose bytes were really sent
    assert receipt.tokens.consumed >= 10
    assert receipt.tokens.produced >= receipt.tokens.committed >= receipt.tokens.consumed


def test_sse_helper_and_cancel_endpoint(upstream, sink, server) -> None:
    url, _ = server
    before = len(sink.receipts)
    requests_before = len(upstream.requests)
    with httpx.Client(timeout=10) as http, http.stream("POST", f"{url}/sse") as response:
        stream_id = response.headers["x-streamguard-stream-id"]
        lines = response.iter_lines()
        assert next(lines) == "event: stream"
        assert json.loads(next(lines)[len("data: ") :]) == {"stream_id": stream_id}
        seen = 0
        for line in lines:
            if line.startswith("data:"):
                seen += 1
                if seen == 5:
                    t_stop = time.monotonic_ns()
                    cancel = http.post(f"{url}/streams/{stream_id}/cancel")
                    assert cancel.json() == {"stream_id": stream_id, "cancelled": True}
            if line == "event: error":
                error = json.loads(next(lines)[len("data: ") :])
                break
    assert error["error"]["type"] == "manual"
    assert error["error"]["code"] == "streaming_terminated"
    record = upstream.requests[requests_before]
    assert record.wait_done(3)
    assert (record.disconnected_ns - t_stop) / 1e6 <= 100
    receipt = _receipt_for(sink, before)
    assert (receipt.reason, receipt.category) == ("manual", "operator")
    with httpx.Client() as http:
        assert http.post(f"{url}/streams/{stream_id}/cancel").status_code == 404


def test_websocket_client_closing_stops_upstream(upstream, sink, server) -> None:
    from websockets.sync.client import connect

    url, _ = server
    before = len(sink.receipts)
    requests_before = len(upstream.requests)
    with connect(url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"question": "hi"}))
        assert json.loads(ws.recv())["type"] == "stream"
        for _ in range(10):
            assert json.loads(ws.recv())["type"] == "text"
        t_stop = time.monotonic_ns()
    record = upstream.requests[requests_before]
    assert record.wait_done(3)
    assert (record.disconnected_ns - t_stop) / 1e6 <= 100
    assert _receipt_for(sink, before).reason == "client_disconnect"


def test_websocket_cancel_message(upstream, sink, server) -> None:
    from websockets.sync.client import connect

    url, _ = server
    before = len(sink.receipts)
    with connect(url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"question": "hi"}))
        stream_id = json.loads(ws.recv())["stream_id"]
        json.loads(ws.recv())
        ws.send(json.dumps({"type": "cancel"}))
        kinds = []
        while True:
            message = json.loads(ws.recv())
            kinds.append(message["type"])
            if message["type"] != "text":
                break
    assert kinds[-1] == "cancelled"
    receipt = _receipt_for(sink, before)
    assert (receipt.stream_id, receipt.reason) == (stream_id, "manual")
