"""LangChain's ``astream_events`` (v2, v1) and ``astream_log``, and LlamaIndex's chat engines:
frameworks that drain the model stream on a background task or thread into a queue the
application reads. When the application stops reading (break and keep, break and drop,
close, task cancel), the model stream stops; a complete run is unchanged and gets
``completed`` with the server's token counts; one receipt each."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from streamguard.testing import InMemoryReceiptSink, Upstream

from ._harness import (
    CUT,
    LONG,
    SHORT,
    STALL,
    cancelled_while_reading,
    completed_with_server_usage,
    now,
    one_receipt,
    stopped_at_once,
    stopped_by_stall,
    the_record,
)
from .test_inline_frameworks import FRAMEWORKS as INLINE

PROMPT = "say something long"
LANGCHAIN = ("langchain-openai", "langchain-anthropic", "langchain-ollama")
APIS = ("events-v2", "events-v1", "log")


@pytest.fixture(params=LANGCHAIN)
def chat(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=APIS)
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _events(chat: str, api: str, up: Upstream, tokens: int) -> AsyncIterator[Any]:
    model = INLINE[chat][0](up, tokens)
    if api == "log":
        return model.astream_log(PROMPT)  # type: ignore[no-any-return]
    return model.astream_events(PROMPT, version=api.removeprefix("events-"))  # type: ignore[no-any-return]


def _text(api: str, item: Any) -> str | None:
    """The model's text in one item, None for items that carry none."""
    if api == "log":
        texts = [
            op["value"].content
            for op in item.ops
            if op["path"] == "/streamed_output/-" and isinstance(op["value"].content, str)
        ]
        return "".join(texts) if texts else None
    if item["event"] == "on_chat_model_stream":
        return str(item["data"]["chunk"].content)
    return None


async def _take(events: AsyncIterator[Any], api: str, n: int) -> list[str]:
    """The model's texts in the first ``n`` items that carry text; the loop is left by break."""
    texts: list[str] = []
    async for item in events:
        text = _text(api, item)
        if text is not None:
            texts.append(text)
            if len(texts) == n:
                break
    return texts


async def _all(events: AsyncIterator[Any], api: str) -> list[str]:
    return [t async for item in events if (t := _text(api, item)) is not None]


async def test_langchain_complete_run_is_unchanged_and_completed_with_server_usage(
    up: Upstream,
    chat: str,
    api: str,
    sink: InMemoryReceiptSink,
    instrument_with: Callable[..., None],
) -> None:
    bare = await _all(_events(chat, api, up, SHORT), api)
    up.reset()
    instrument_with(stall_timeout=STALL)
    guarded = await _all(_events(chat, api, up, SHORT), api)
    assert guarded == bare
    assert "".join(guarded).split() == [f"w{i}" for i in range(SHORT)]
    await sink.wait_for_async(1)
    completed_with_server_usage(sink, the_record(up), provider=INLINE[chat][1])


async def test_langchain_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream,
    chat: str,
    api: str,
    sink: InMemoryReceiptSink,
    instrument_with: Callable[..., None],
) -> None:
    instrument_with(stall_timeout=STALL)
    events = _events(chat, api, up, LONG)
    texts = await _take(events, api, CUT)
    t_stop = now()
    words = "".join(texts).split()  # some chunks carry no text (the role, the usage)
    assert words and words == [f"w{i}" for i in range(len(words))], words
    await asyncio.to_thread(stopped_by_stall, the_record(up), t_stop)
    await sink.wait_for_async(1)
    one_receipt(sink, reason="consumer_stalled", category="client")
    assert events is not None  # kept, not read


async def test_langchain_break_and_drop_stops_the_model_stream_at_once(
    up: Upstream, chat: str, api: str, guarded: InMemoryReceiptSink
) -> None:
    await _take(_events(chat, api, up, LONG), api, CUT)  # the loop drops the generator
    t_stop = now()  # the generator was closed when it was dropped: no GC needed
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_langchain_aclose_stops_the_model_stream_at_once(
    up: Upstream, chat: str, api: str, guarded: InMemoryReceiptSink
) -> None:
    events: Any = _events(chat, api, up, LONG)
    await _take(events, api, CUT)
    t_stop = now()
    await events.aclose()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_langchain_cancelled_consumer_task_stops_the_model_stream_at_once(
    up: Upstream, chat: str, api: str, guarded: InMemoryReceiptSink
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        events = _events(chat, api, up, LONG)
        await _take(events, api, CUT)
        reading.set()
        await events.__anext__()  # waits for the next event: cancelled here
        await asyncio.sleep(30)

    receipt = await cancelled_while_reading(up, guarded, consume, settle=0.05)
    assert receipt.reason in {"consumer_cancelled", "consumer_closed"}


# LlamaIndex: a chat engine over LlamaIndex's Ollama LLM (test_inline_frameworks says why).


def _engine(up: Upstream, tokens: int) -> Any:
    pytest.importorskip("llama_index.core")
    from llama_index.core.chat_engine import SimpleChatEngine

    return SimpleChatEngine.from_defaults(llm=INLINE["llamaindex"][0](up, tokens))


def test_llamaindex_sync_complete_answer_is_unchanged_and_completed(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    bare = list(_engine(up, SHORT).stream_chat(PROMPT).response_gen)
    up.reset()
    instrument_with(stall_timeout=STALL)
    guarded = list(_engine(up, SHORT).stream_chat(PROMPT).response_gen)
    assert guarded == bare
    assert "".join(guarded).split() == [f"w{i}" for i in range(SHORT)]
    completed_with_server_usage(sink, the_record(up), provider="ollama")


def _sync_take(response: Any, n: int) -> tuple[Any, list[str]]:
    gen = response.response_gen
    got: list[str] = []
    for delta in gen:
        got.append(delta)
        if len(got) == n:
            break
    return gen, got


def test_llamaindex_sync_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    response = _engine(up, LONG).stream_chat(PROMPT)
    gen, got = _sync_take(response, CUT)
    t_stop = now()
    assert len(got) == CUT
    stopped_by_stall(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert gen is not None and response is not None


def test_llamaindex_sync_break_and_drop_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    done = threading.Event()
    t_stop = 0
    engine = _engine(up, LONG)  # imported and built here: the 5 s below are the app's own

    def app() -> None:
        nonlocal t_stop
        response = engine.stream_chat(PROMPT)
        for i, _delta in enumerate(response.response_gen):
            if i + 1 == CUT:
                t_stop = now()
                break  # the generator is dropped here (0.14's finally joins the writer)
        done.set()
        assert response is not None  # the response is kept: only the generator was left

    threading.Thread(target=app, daemon=True).start()
    # Without the guard the application itself blocks here until the whole answer is written
    # (0.14); before 0.14 nothing is joined and the writer went on to the end.
    assert done.wait(5), "the application is still blocked after its break"
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")


def test_llamaindex_sync_close_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    response = _engine(up, LONG).stream_chat(PROMPT)
    gen, got = _sync_take(response, CUT)
    assert len(got) == CUT
    t_stop = now()
    gen.close()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")
    assert response is not None


def test_llamaindex_dropped_response_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    _engine(up, LONG).stream_chat(PROMPT)  # never read, dropped
    t_stop = now()
    stopped_by_stall(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_stalled", category="client")


async def test_llamaindex_async_complete_answer_is_unchanged_and_completed(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    response = await _engine(up, SHORT).astream_chat(PROMPT)
    bare = [d async for d in response.async_response_gen()]
    up.reset()
    instrument_with(stall_timeout=STALL)
    response = await _engine(up, SHORT).astream_chat(PROMPT)
    guarded = [d async for d in response.async_response_gen()]
    assert guarded == bare
    assert "".join(guarded).split() == [f"w{i}" for i in range(SHORT)]
    await sink.wait_for_async(1)
    completed_with_server_usage(sink, the_record(up), provider="ollama")


async def _atake(response: Any, n: int) -> tuple[Any, list[str]]:
    gen = response.async_response_gen()
    got: list[str] = []
    async for delta in gen:
        got.append(delta)
        if len(got) == n:
            break
    return gen, got


async def test_llamaindex_async_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    response = await _engine(up, LONG).astream_chat(PROMPT)
    gen, got = await _atake(response, CUT)
    t_stop = now()
    assert len(got) == CUT
    await asyncio.to_thread(stopped_by_stall, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert gen is not None


async def test_llamaindex_async_break_and_drop_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    response = await _engine(up, LONG).astream_chat(PROMPT)
    await _atake(response, CUT)  # the generator is dropped: the event loop closes it
    t_stop = now()  # the generator was closed when it was dropped: no GC needed
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")
    assert response is not None  # the response is kept: only the generator was left


async def test_llamaindex_async_cancelled_consumer_task_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        response = await _engine(up, LONG).astream_chat(PROMPT)
        i = 0
        async for _delta in response.async_response_gen():
            i += 1
            if i == CUT:
                reading.set()
                await asyncio.sleep(30)

    receipt = await cancelled_while_reading(up, guarded, consume)
    assert receipt.reason in {"consumer_cancelled", "consumer_closed"}


# LangChain's astream_events(version="v3"): a typed stream object whose projections any
# number of cursors read, fed by LangChain's task.


async def _v3(chat: str, up: Upstream, tokens: int) -> Any:
    return await INLINE[chat][0](up, tokens).astream_events(PROMPT, version="v3")


async def test_langchain_v3_complete_stream_is_unchanged_and_completed_with_server_usage(
    up: Upstream, chat: str, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    bare_stream = await _v3(chat, up, SHORT)
    bare_text = bare_stream.text
    bare = [d async for d in bare_text]
    await bare_stream
    up.reset()
    instrument_with(stall_timeout=STALL)
    stream = await _v3(chat, up, SHORT)
    guarded = [d async for d in stream.text]
    message = await stream
    assert isinstance(stream, type(bare_stream)) and isinstance(stream.text, type(bare_text))
    assert guarded == bare
    assert "".join(guarded).split() == [f"w{i}" for i in range(SHORT)]
    assert message is not None
    await sink.wait_for_async(1)
    completed_with_server_usage(sink, the_record(up), provider=INLINE[chat][1])


async def _v3_take(stream: Any, n: int) -> list[str]:
    got: list[str] = []
    async for delta in stream.text:
        got.append(delta)
        if len(got) == n:
            break
    return got


async def test_langchain_v3_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, chat: str, guarded: InMemoryReceiptSink
) -> None:
    stream = await _v3(chat, up, LONG)
    words = "".join(await _v3_take(stream, CUT)).split()
    assert words and words == [f"w{i}" for i in range(len(words))], words
    t_stop = now()
    await asyncio.to_thread(stopped_by_stall, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert stream is not None  # kept, not read


async def test_langchain_v3_break_and_drop_stops_the_model_stream_at_once(
    up: Upstream, chat: str, guarded: InMemoryReceiptSink
) -> None:
    # LangChain's task holds the stream object itself; the application's handles on it are
    # its own, and dropping the last of them is the signal.
    stream = await _v3(chat, up, LONG)
    await _v3_take(stream, CUT)
    del stream
    t_stop = now()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_langchain_v3_projection_kept_after_the_stream_is_dropped_reads_to_the_end(
    up: Upstream, chat: str, guarded: InMemoryReceiptSink
) -> None:
    # The application keeps only what it reads: a projection, a cursor, an await. None of
    # them is a drop of the run.
    text = (await _v3(chat, up, SHORT)).text
    first = [d async for d in text]
    cursor = aiter((await _v3(chat, up, SHORT)).text)
    second = [await anext(cursor) for _ in range(2)] + [d async for d in cursor]
    message = await (await _v3(chat, up, SHORT))
    assert "".join(first).split() == [f"w{i}" for i in range(SHORT)]
    assert second == first
    assert message.text.split() == "".join(first).split()
    await guarded.wait_for_async(3)
    assert [r.reason for r in guarded.wait_for(3)] == ["completed"] * 3


@pytest.mark.parametrize("how", ["aclose", "async-with"])
async def test_langchain_v3_close_stops_the_model_stream_at_once(
    up: Upstream, chat: str, how: str, guarded: InMemoryReceiptSink
) -> None:
    stream = await _v3(chat, up, LONG)
    if how == "aclose":
        await _v3_take(stream, CUT)
        t_stop = now()
        await stream.aclose()
    else:
        async with stream as inside:
            await _v3_take(inside, CUT)
            t_stop = now()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")
    await stream.aclose()  # a second close changes nothing


async def test_langchain_v3_cancelled_reader_stops_the_model_stream_at_once(
    up: Upstream, chat: str, guarded: InMemoryReceiptSink
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        stream = await _v3(chat, up, LONG)
        await _v3_take(stream, CUT)
        reading.set()
        await stream.output  # waits for the whole message: cancelled here

    receipt = await cancelled_while_reading(up, guarded, consume, settle=0.05)
    assert receipt.reason == "consumer_cancelled"


# A model inside a chain, or bound (RunnableBinding forwards astream_events to the model's
# own: one run, one scope), streams events the same way.


def _composed(kind: str, up: Upstream, tokens: int) -> Any:
    model = INLINE["langchain-openai"][0](up, tokens)
    if kind == "bound":
        return model.bind(stop=["never-said"])
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    return ChatPromptTemplate.from_messages([("user", "{q}")]) | model | StrOutputParser()


@pytest.mark.parametrize("kind", ["bound", "chain"])
async def test_langchain_composed_runnable_complete_and_break_and_drop(
    up: Upstream, kind: str, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    prompt: Any = {"q": PROMPT} if kind == "chain" else PROMPT
    bare = await _all(_composed(kind, up, SHORT).astream_events(prompt, version="v2"), "events-v2")
    up.reset()
    instrument_with(stall_timeout=STALL)
    runnable = _composed(kind, up, SHORT)
    assert await _all(runnable.astream_events(prompt, version="v2"), "events-v2") == bare
    await sink.wait_for_async(1)
    completed_with_server_usage(sink, the_record(up), provider="openai")

    up.reset()
    events = _composed(kind, up, LONG).astream_events(prompt, version="v2")
    await _take(events, "events-v2", CUT)
    del events
    t_stop = now()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await sink.wait_for_async(2)
    assert [r.reason for r in sink.wait_for(2)] == ["completed", "consumer_closed"]
