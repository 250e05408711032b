"""LangChain (openai, anthropic, ollama), LlamaIndex and pydantic-ai: frameworks that read the
vendor SDK's stream in the application's own loop (no background task), so the vendor-SDK
guards see the application's consumption through the framework's generator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
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

PROMPT = "say something long"


def _langchain_openai(up: Upstream, tokens: int) -> Any:
    mod = pytest.importorskip("langchain_openai")
    return mod.ChatOpenAI(
        model="gpt-4o-mini",
        base_url=up.openai_base_url,
        api_key="test",
        max_tokens=tokens,
        max_retries=0,
    )


def _langchain_anthropic(up: Upstream, tokens: int) -> Any:
    mod = pytest.importorskip("langchain_anthropic")
    return mod.ChatAnthropic(
        model="claude-test",
        base_url=up.anthropic_base_url,
        api_key="test",
        max_tokens=tokens,
        max_retries=0,
    )


def _langchain_ollama(up: Upstream, tokens: int) -> Any:
    mod = pytest.importorskip("langchain_ollama")
    return mod.ChatOllama(model="llama3", base_url=up.ollama_host, num_predict=tokens)


def _llamaindex(up: Upstream, tokens: int) -> Any:
    # LlamaIndex's Ollama LLM: its OpenAI LLM needs openai<3 with a current llama-index-core
    # (pyproject's frameworks extra says why).
    mod = pytest.importorskip("llama_index.llms.ollama")
    return mod.Ollama(
        model="llama3",
        base_url=up.ollama_host,
        context_window=4096,  # else it asks the server (POST /api/show) at every call
        additional_kwargs={"num_predict": tokens},
        request_timeout=30,
    )


def _sync_stream(name: str, llm: Any) -> Iterator[Any]:
    if name == "llamaindex":
        from llama_index.core.llms import ChatMessage

        return iter(llm.stream_chat([ChatMessage(role="user", content=PROMPT)]))
    return iter(llm.stream(PROMPT))


async def _async_stream(name: str, llm: Any) -> AsyncIterator[Any]:
    if name == "llamaindex":
        from llama_index.core.llms import ChatMessage

        gen = await llm.astream_chat([ChatMessage(role="user", content=PROMPT)])
        return gen  # type: ignore[no-any-return]
    return llm.astream(PROMPT)  # type: ignore[no-any-return]


FRAMEWORKS: dict[str, tuple[Callable[[Upstream, int], Any], str]] = {
    "langchain-openai": (_langchain_openai, "openai"),
    "langchain-anthropic": (_langchain_anthropic, "anthropic"),
    "langchain-ollama": (_langchain_ollama, "ollama"),
    "llamaindex": (_llamaindex, "ollama"),
}


@pytest.fixture(params=list(FRAMEWORKS), ids=list(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _llm(framework: str, up: Upstream, tokens: int) -> Any:
    return FRAMEWORKS[framework][0](up, tokens)


def _take(stream: Iterator[Any], n: int) -> None:
    for i, _chunk in enumerate(stream):
        if i == n:
            return


async def _atake(stream: AsyncIterator[Any], n: int) -> None:
    i = 0
    async for _chunk in stream:
        i += 1
        if i == n:
            return


def test_sync_complete_stream_gets_completed_with_server_usage(
    up: Upstream, framework: str, guarded: InMemoryReceiptSink
) -> None:
    for _chunk in _sync_stream(framework, _llm(framework, up, SHORT)):
        pass
    completed_with_server_usage(guarded, the_record(up), provider=FRAMEWORKS[framework][1])


async def test_async_complete_stream_gets_completed_with_server_usage(
    up: Upstream, framework: str, guarded: InMemoryReceiptSink
) -> None:
    async for _chunk in await _async_stream(framework, _llm(framework, up, SHORT)):
        pass
    await guarded.wait_for_async(1)
    completed_with_server_usage(guarded, the_record(up), provider=FRAMEWORKS[framework][1])


def test_sync_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, framework: str, guarded: InMemoryReceiptSink
) -> None:
    stream = _sync_stream(framework, _llm(framework, up, LONG))
    _take(stream, CUT)
    t_stop = now()
    stopped_by_stall(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert stream is not None


def test_sync_break_and_drop_stops_the_upstream_at_once(
    up: Upstream, framework: str, guarded: InMemoryReceiptSink
) -> None:
    stream = _sync_stream(framework, _llm(framework, up, LONG))
    _take(stream, CUT)
    del stream
    t_stop = now()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")


def test_sync_close_stops_the_upstream_at_once(
    up: Upstream, framework: str, guarded: InMemoryReceiptSink
) -> None:
    stream: Any = _sync_stream(framework, _llm(framework, up, LONG))
    _take(stream, CUT)
    t_stop = now()
    stream.close()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_async_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, framework: str, guarded: InMemoryReceiptSink
) -> None:
    stream = await _async_stream(framework, _llm(framework, up, LONG))
    await _atake(stream, CUT)
    t_stop = now()
    await asyncio.to_thread(stopped_by_stall, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert stream is not None


async def test_async_aclose_stops_the_upstream_at_once(
    up: Upstream, framework: str, guarded: InMemoryReceiptSink
) -> None:
    stream: Any = await _async_stream(framework, _llm(framework, up, LONG))
    await _atake(stream, CUT)
    t_stop = now()
    await stream.aclose()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_async_task_cancel_stops_the_upstream_at_once(
    up: Upstream, framework: str, guarded: InMemoryReceiptSink
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        i = 0
        async for _chunk in await _async_stream(framework, _llm(framework, up, LONG)):
            i += 1
            if i == CUT:
                reading.set()
                await asyncio.sleep(30)

    receipt = await cancelled_while_reading(up, guarded, consume)
    assert receipt.reason in {"consumer_cancelled", "consumer_closed"}


# pydantic-ai: ``run_stream`` is an async context manager; leaving it ends the stream.


def _pydantic_agent(up: Upstream) -> Any:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(
        "gpt-4o-mini", provider=OpenAIProvider(base_url=up.openai_base_url, api_key="test")
    )
    return Agent(model)


async def test_pydantic_ai_complete_run_gets_completed_with_server_usage(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    agent = _pydantic_agent(up)
    async with agent.run_stream(PROMPT, model_settings={"max_tokens": SHORT}) as run:
        text = "".join([piece async for piece in run.stream_text(delta=True)])
    assert text.split() == [f"w{i}" for i in range(SHORT)]
    await guarded.wait_for_async(1)
    completed_with_server_usage(guarded, the_record(up), provider="openai")


async def test_pydantic_ai_leaving_run_stream_stops_the_upstream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    agent = _pydantic_agent(up)
    async with agent.run_stream(PROMPT, model_settings={"max_tokens": LONG}) as run:
        await _atake(run.stream_text(delta=True), CUT)
        t_stop = now()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    receipt = one_receipt(guarded, category="client")
    # pydantic-ai's exit closes the stream or cancels its own task that reads it.
    assert receipt.reason in {"consumer_closed", "consumer_cancelled"}


async def test_pydantic_ai_cancelled_task_stops_the_upstream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    agent = _pydantic_agent(up)
    reading = asyncio.Event()

    async def consume() -> None:
        async with agent.run_stream(PROMPT, model_settings={"max_tokens": LONG}) as run:
            i = 0
            async for _piece in run.stream_text(delta=True):
                i += 1
                if i == CUT:
                    reading.set()
                    await asyncio.sleep(30)

    task = asyncio.create_task(consume())
    await reading.wait()
    t_stop = now()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    receipt = one_receipt(guarded, category="client")
    assert receipt.reason in {"consumer_cancelled", "consumer_closed"}
