"""A stream a background run opens after its consumer has already gone (a framework that
retries after the stall cut, or starts its next model call): the stream is stopped as soon as
it begins, and the response the SDK got for it is closed at once, on every SDK, sync and async.
Without that the request was sent, the first read raised, and the server went on generating
for nobody (found with CrewAI's retries: 100 tokens in 2 s, one receipt claiming 0)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import ollama
import openai
import pytest

import streamguard
from streamguard._engine.reasons import StopReason
from streamguard._receipts.signing import HmacSigner
from streamguard.integrations._owners import RunStreams
from streamguard.testing import Upstream
from streamguard.testing.sinks import InMemoryReceiptSink

PROMPT = [{"role": "user", "content": "hi"}]
TOKENS = 400  # at 10 ms a token: 4 s of generation if nothing stops it


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.01) as up:
        yield up


@pytest.fixture
def sink() -> Iterator[InMemoryReceiptSink]:
    sink = InMemoryReceiptSink()
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"))
    try:
        yield sink
    finally:
        streamguard.uninstrument()


def _create(provider: str, up: Upstream, aio: bool) -> tuple[Any, Any]:
    """The client and the call that opens a stream (a coroutine when ``aio``)."""
    if provider == "openai":
        c: Any = (openai.AsyncOpenAI if aio else openai.OpenAI)(
            base_url=up.openai_base_url, api_key="k", max_retries=0
        )
        return c, c.chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=TOKENS, stream=True
        )
    if provider == "anthropic":
        c = (anthropic.AsyncAnthropic if aio else anthropic.Anthropic)(
            base_url=up.anthropic_base_url, api_key="k", max_retries=0
        )
        return c, c.messages.create(
            model="claude-sonnet-4-0", messages=PROMPT, max_tokens=TOKENS, stream=True
        )
    c = (ollama.AsyncClient if aio else ollama.Client)(host=up.ollama_host)
    return c, c.chat(model="llama3", messages=PROMPT, stream=True, options={"num_predict": TOKENS})


def _stopped_run() -> RunStreams:
    run = RunStreams()
    run.stop(StopReason.CONSUMER_CLOSED, "the application left before this call")
    return run


def _check(
    up: Upstream, before: int, sink: InMemoryReceiptSink, t_open: int, provider: str
) -> None:
    if provider == "ollama":  # its stream sends the request at the first read: none is sent
        time.sleep(0.2)
        assert up.requests[before:] == []
        (receipt,) = sink.wait_for(1, 2)
        assert (receipt.reason, receipt.category) == ("consumer_closed", "client")
        return
    (record,) = up.requests[before:]  # openai and anthropic send it in create()
    assert record.wait_done(2), f"the server still generates: {record.tokens_generated} tokens"
    assert record.outcome == "disconnected", record.outcome
    assert record.tokens_after(t_open) < 50, record.tokens_generated
    (receipt,) = sink.wait_for(1, 2)
    assert (receipt.reason, receipt.category) == ("consumer_closed", "client")


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_a_sync_stream_opened_in_a_stopped_run_closes_its_response(
    upstream: Upstream, sink: InMemoryReceiptSink, provider: str
) -> None:
    before, t_open = len(upstream.requests), time.monotonic_ns()
    token = _stopped_run().set()
    try:
        client, stream = _create(provider, upstream, aio=False)
        assert list(stream) == []  # a quiet stop (the consumer left): the iteration just ends
    finally:
        RunStreams.reset(token)
    _check(upstream, before, sink, t_open, provider)
    client.close() if provider != "ollama" else client._client.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
async def test_an_async_stream_opened_in_a_stopped_run_closes_its_response(
    upstream: Upstream, sink: InMemoryReceiptSink, provider: str
) -> None:
    before, t_open = len(upstream.requests), time.monotonic_ns()
    token = _stopped_run().set()
    try:
        client, call = _create(provider, upstream, aio=True)
        stream = await call
        assert [chunk async for chunk in stream] == []
    finally:
        RunStreams.reset(token)
    await asyncio.to_thread(_check, upstream, before, sink, t_open, provider)
    await (client.close() if provider != "ollama" else client._client.aclose())
