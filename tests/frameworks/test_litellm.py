"""LiteLLM, three routes: ``openai/`` (a real openai.Stream inside), ``anthropic/`` and
``ollama/`` (LiteLLM's own HTTP handlers), sync and async."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamguard.testing import InMemoryReceiptSink, Upstream

from ._harness import (
    CUT,
    LONG,
    SHORT,
    cancelled_while_reading,
    completed_with_server_usage,
    now,
    one_receipt,
    stopped_at_once,
    stopped_by_stall,
    the_record,
)

litellm = pytest.importorskip("litellm")

ROUTES = {
    # route: (model, base URL attribute of the upstream, provider in the receipt)
    "openai": ("openai/gpt-4o-mini", "openai_base_url", "openai"),
    "anthropic": ("anthropic/claude-test", "anthropic_base_url", "anthropic"),
    "ollama": ("ollama_chat/llama3", "ollama_host", "ollama_chat"),
}
MESSAGES = [{"role": "user", "content": "say something long"}]


@pytest.fixture(params=list(ROUTES), ids=list(ROUTES))
def route(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", autouse=True)
def _warm(shared_upstream: Upstream) -> None:
    """One plain call per route first: LiteLLM's first call imports for seconds, longer than
    the tier's short stall timeout, between building the stream and reading it."""
    for name in ROUTES:
        list(litellm.completion(**_kwargs(shared_upstream, name, 1)))


def _kwargs(up: Upstream, route: str, tokens: int) -> dict[str, Any]:
    model, base, _provider = ROUTES[route]
    return {
        "model": model,
        "api_base": getattr(up, base),
        "api_key": "test",
        "messages": MESSAGES,
        "max_tokens": tokens,
        "stream": True,
    }


def _content(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_sync_complete_stream_gets_completed_with_server_usage(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    stream = litellm.completion(**_kwargs(up, route, SHORT))
    chunks = list(stream)
    assert _content(chunks).split() == [f"w{i}" for i in range(SHORT)]
    completed_with_server_usage(
        guarded, the_record(up), provider=ROUTES[route][2], model=stream.model
    )


async def test_async_complete_stream_gets_completed_with_server_usage(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    stream = await litellm.acompletion(**_kwargs(up, route, SHORT))
    chunks = [chunk async for chunk in stream]
    assert _content(chunks).split() == [f"w{i}" for i in range(SHORT)]
    await guarded.wait_for_async(1)
    completed_with_server_usage(
        guarded, the_record(up), provider=ROUTES[route][2], model=stream.model
    )


def test_chunks_are_the_ones_litellm_gives_without_streamguard(
    up: Upstream, route: str, sink: InMemoryReceiptSink
) -> None:
    import streamguard

    def contents() -> list[tuple[str | None, str | None]]:
        stream = litellm.completion(**_kwargs(up, route, SHORT))
        return [
            (c.choices[0].delta.content, c.choices[0].finish_reason) if c.choices else (None, None)
            for c in stream
        ]

    plain = contents()
    streamguard.instrument(sinks=[sink])
    try:
        guarded = contents()
    finally:
        streamguard.uninstrument()
    assert guarded == plain
    assert len(sink.receipts) == 1


def test_sync_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    stream = litellm.completion(**_kwargs(up, route, LONG))
    for i, _chunk in enumerate(stream):
        if i == CUT:
            break
    t_stop = now()
    stopped_by_stall(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert stream is not None  # kept until here


def test_sync_break_and_drop_stops_the_upstream_at_once(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    stream = litellm.completion(**_kwargs(up, route, LONG))
    for i, _chunk in enumerate(stream):
        if i == CUT:
            break
    del stream, _chunk
    t_stop = now()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")


def test_sync_close_stops_the_upstream_at_once(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    stream = litellm.completion(**_kwargs(up, route, LONG))
    for i, _chunk in enumerate(stream):
        if i == CUT:
            break
    t_stop = now()
    stream.close()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_async_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    stream = await litellm.acompletion(**_kwargs(up, route, LONG))
    i = 0
    async for _chunk in stream:
        i += 1
        if i == CUT:
            break
    t_stop = now()
    await asyncio.to_thread(stopped_by_stall, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert stream is not None


async def test_async_break_and_drop_stops_the_upstream_at_once(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    stream = await litellm.acompletion(**_kwargs(up, route, LONG))
    i = 0
    async for _chunk in stream:
        i += 1
        if i == CUT:
            break
    del stream, _chunk
    t_stop = now()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_async_aclose_stops_the_upstream_at_once(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    stream = await litellm.acompletion(**_kwargs(up, route, LONG))
    i = 0
    async for _chunk in stream:
        i += 1
        if i == CUT:
            break
    t_stop = now()
    await stream.aclose()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_async_task_cancel_stops_the_upstream_at_once(
    up: Upstream, route: str, guarded: InMemoryReceiptSink
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        stream = await litellm.acompletion(**_kwargs(up, route, LONG))
        i = 0
        async for _chunk in stream:
            i += 1
            if i == CUT:
                reading.set()
                await asyncio.sleep(30)  # the task is cancelled in the consumer's own code

    receipt = await cancelled_while_reading(up, guarded, consume)
    assert receipt.reason == "consumer_cancelled"
