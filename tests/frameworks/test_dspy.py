"""DSPy: the model stream a program opens is guarded whichever engine opens it, and stops when
the application stops consuming ``dspy.streamify``'s generator. A complete run is unchanged.

Two engines: DSPy's native one (the default on DSPy 3.4+, ``engine="auto"``: DSPy's own HTTP
client, guarded at ``LM15Engine.stream``), and LiteLLM's (``engine="litellm"``; DSPy 3.0-3.3
always calls LiteLLM), guarded by the LiteLLM guard. A DSPy without the native engine skips
its cases by feature detection.

``streamify(async_streaming=False)`` drains the program's stream on a thread into an unbounded
queue (the DSPy integration stops it); the async streamer holds 16 items, after which the
program waits and its model stream, no longer read, is stopped by that stream's stall timer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from streamguard.testing import InMemoryReceiptSink, Upstream

from ._harness import (
    CUT,
    LONG,
    SHORT,
    STALL,
    WAIT,
    cancelled_while_reading,
    completed_with_server_usage,
    now,
    one_receipt,
    stopped_at_once,
    stopped_by_stall,
    the_record,
)

dspy = pytest.importorskip("dspy")


def _has_native_engine() -> bool:
    try:
        return importlib.util.find_spec("dspy.clients.engines.lm15_engine") is not None
    except ImportError:  # an older DSPy has no dspy.clients.engines package at all
        return False


NATIVE = _has_native_engine()
_HAS_ENGINE_OPTION = "engine" in inspect.signature(dspy.LM.__init__).parameters

ENGINES = [
    pytest.param(
        "native",
        marks=pytest.mark.skipif(not NATIVE, reason="this DSPy has no native engine (lm15)"),
    ),
    "litellm",
]


def _lm(up: Upstream, tokens: int, engine: str) -> Any:
    options: dict[str, Any] = {}
    if engine == "litellm" and _HAS_ENGINE_OPTION:
        options["engine"] = "litellm"
    # "native": the default engine, as an application constructs it.
    return dspy.LM(
        "openai/gpt-4o-mini",
        api_base=up.openai_base_url,
        api_key="test",
        cache=False,
        max_tokens=tokens,
        num_retries=0,
        **options,
    )


def _program(up: Upstream, tokens: int, engine: str, *, async_streaming: bool = False) -> Any:
    """A program that streams one completion (DSPy's own adapters would parse the test
    upstream's words as a malformed answer and call the model again). The async streamer
    runs an async program (``await lm.acall``: the async engine), the sync one a sync one."""
    lm = _lm(up, tokens, engine)

    class Raw(dspy.Module):  # type: ignore[misc]
        def forward(self, question: str) -> Any:
            return dspy.Prediction(answer=lm(question)[0])

        async def aforward(self, question: str) -> Any:
            return dspy.Prediction(answer=(await lm.acall(question))[0])

    return dspy.streamify(Raw(), is_async_program=async_streaming, async_streaming=async_streaming)


def _text(item: Any) -> str | None:
    choices = getattr(item, "choices", None)
    if not choices:
        return None
    return getattr(choices[0].delta, "content", None) or None


def _take(gen: Any, n: int) -> list[str]:
    texts: list[str] = []
    for item in gen:
        text = _text(item)
        if text is not None:
            texts.append(text)
            if len(texts) == n:
                break
    return texts


async def _atake(gen: Any, n: int) -> list[str]:
    texts: list[str] = []
    async for item in gen:
        text = _text(item)
        if text is not None:
            texts.append(text)
            if len(texts) == n:
                break
    return texts


def _words(texts: list[str]) -> list[str]:
    words = "".join(texts).split()
    assert words == [f"w{i}" for i in range(len(words))] and words, words
    return words


# --------------------------------------------------------------- sync streamify


@pytest.mark.parametrize("engine", ENGINES)
def test_complete_run_is_unchanged_and_completed_with_server_usage(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None], engine: str
) -> None:
    bare = [t for item in _program(up, SHORT, engine)(question="hi") if (t := _text(item))]
    up.reset()
    instrument_with(stall_timeout=STALL)
    items = list(_program(up, SHORT, engine)(question="hi"))
    guarded = [t for item in items if (t := _text(item))]
    assert guarded == bare
    assert "".join(guarded).split() == [f"w{i}" for i in range(SHORT)]
    assert isinstance(items[-1], dspy.Prediction)
    completed_with_server_usage(sink, the_record(up), provider="openai", model="gpt-4o-mini")


@pytest.mark.parametrize("engine", ENGINES)
def test_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink, engine: str
) -> None:
    gen = _program(up, LONG, engine)(question="hi")
    _words(_take(gen, CUT))
    t_stop = now()
    stopped_by_stall(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert gen is not None


@pytest.mark.parametrize("engine", ENGINES)
def test_break_and_drop_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink, engine: str
) -> None:
    _take(_program(up, LONG, engine)(question="hi"), CUT)  # the generator is dropped here
    t_stop = now()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")


@pytest.mark.parametrize("engine", ENGINES)
def test_close_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink, engine: str
) -> None:
    gen = _program(up, LONG, engine)(question="hi")
    _take(gen, CUT)
    t_stop = now()
    gen.close()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")


# -------------------------------------------------------------- async streamify


@pytest.mark.parametrize("engine", ENGINES)
async def test_async_complete_run_is_unchanged_and_completed_with_server_usage(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None], engine: str
) -> None:
    program = _program(up, SHORT, engine, async_streaming=True)
    bare = [t async for item in program(question="hi") if (t := _text(item))]
    up.reset()
    instrument_with(stall_timeout=STALL)
    program = _program(up, SHORT, engine, async_streaming=True)
    items = [item async for item in program(question="hi")]
    guarded = [t for item in items if (t := _text(item))]
    assert guarded == bare
    assert "".join(guarded).split() == [f"w{i}" for i in range(SHORT)]
    assert isinstance(items[-1], dspy.Prediction)
    record = await asyncio.to_thread(the_record, up)
    await sink.wait_for_async(1)
    await asyncio.to_thread(
        completed_with_server_usage, sink, record, provider="openai", model="gpt-4o-mini"
    )


@pytest.mark.parametrize("engine", ENGINES)
async def test_async_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink, engine: str
) -> None:
    seen: dict[str, Any] = {}
    await _own_task(_read(up, engine, seen, close=False))
    # The streamer's buffer (16 items) fills, the program waits and stops reading its stream.
    await asyncio.to_thread(stopped_by_stall, the_record(up), seen["t_stop"])
    await sink_receipt(guarded, reason="consumer_stalled", category="client")
    await _own_task(seen["gen"].aclose())


@pytest.mark.parametrize("engine", ENGINES)
async def test_async_close_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink, engine: str
) -> None:
    seen: dict[str, Any] = {}
    # Closing cancels the streamer's task group, and the program in it.
    await _own_task(_read(up, engine, seen, close=True))
    await asyncio.to_thread(stopped_at_once, the_record(up), seen["t_stop"])
    await sink_receipt(guarded, category="client")


async def _read(up: Upstream, engine: str, seen: dict[str, Any], *, close: bool) -> None:
    """Read ``CUT`` words of a long answer from the async streamer, then stop (and close)."""
    seen["gen"] = gen = _program(up, LONG, engine, async_streaming=True)(question="hi")
    _words(await _atake(gen, CUT))
    seen["t_stop"] = now()
    if close:
        await gen.aclose()
        await asyncio.sleep(0.2)  # a cancellation DSPy's cleanup leaks arrives here


async def _own_task(work: Any) -> None:
    """Run ``work`` in a task of its own, so DSPy's cleanup of the streamer does not reach
    the test's task; a failed assertion in ``work`` still fails the test.

    The streamer leaves its inner generator to the loop's finalizer, whose task exits the
    task group's cancel scope from the wrong task: DSPy 3.4 then cancels the task that first
    read the generator, DSPy 3.0 raises an exception group (GeneratorExit,
    ClosedResourceError) from ``aclose``, with or without StreamGuard. The tests check the
    model stream and the receipt, not DSPy's cleanup."""
    task = asyncio.create_task(work)
    await asyncio.wait([task])
    if not task.cancelled() and isinstance(task.exception(), AssertionError):
        raise task.exception()  # type: ignore[misc]


@pytest.mark.parametrize("engine", ENGINES)
async def test_async_task_cancel_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink, engine: str
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        gen = _program(up, LONG, engine, async_streaming=True)(question="hi")
        async for item in gen:
            if _text(item):
                reading.set()

    await cancelled_while_reading(up, guarded, consume)


async def sink_receipt(sink: InMemoryReceiptSink, **expected: Any) -> Any:
    await sink.wait_for_async(1)
    return await asyncio.to_thread(one_receipt, sink, **expected)


# ------------------------------------------------- the native engine, called directly


def _request(tokens: int) -> Any:
    from dspy.lm15 import Config, Message, Request

    return Request(
        model="openai/gpt-4o-mini",
        messages=(Message.user("hi"),),
        config=Config(max_tokens=tokens),
    )


def _engine(up: Upstream, asynchronous: bool = False) -> Any:
    from dspy.clients.engines import AsyncLM15Engine, LM15Engine
    from dspy.lm15 import RouterConfig

    config = RouterConfig(
        api_keys={"openai-chat": "test"}, base_urls={"openai-chat": up.openai_base_url}
    )
    return (AsyncLM15Engine if asynchronous else LM15Engine)(config)


def _event_text(event: Any) -> str | None:
    if getattr(event, "type", None) != "delta":
        return None
    return getattr(event.delta, "text", None)


native_only = pytest.mark.skipif(not NATIVE, reason="this DSPy has no native engine (lm15)")


@native_only
def test_engine_stream_is_unchanged_and_completed_with_server_usage(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    engine = _engine(up)
    bare = [repr(event) for event in engine.stream(_request(SHORT))]
    up.reset()
    instrument_with(stall_timeout=STALL)
    events = engine.stream(_request(SHORT))
    assert events.streamguard.stream_id  # the engine's stream is guarded
    guarded = [repr(event) for event in events]
    assert guarded == bare
    completed_with_server_usage(sink, the_record(up), provider="openai", model="gpt-4o-mini")
    engine.close()


@native_only
def test_engine_stream_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    engine = _engine(up)
    events = engine.stream(_request(LONG))
    texts = []
    for event in events:
        if text := _event_text(event):
            texts.append(text)
            if len(texts) == CUT:
                break
    _words(texts)
    t_stop = now()
    stopped_by_stall(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert events is not None
    engine.close()


@native_only
def test_engine_stream_break_and_drop_stops_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    engine = _engine(up)
    count = 0
    for event in engine.stream(_request(LONG)):
        count += _event_text(event) is not None
        if count == CUT:
            break  # the stream is dropped here
    t_stop = now()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")
    engine.close()


@native_only
async def test_async_engine_stream_close_stops_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    engine = _engine(up, asynchronous=True)
    events = engine.stream(_request(LONG))
    count = 0
    async for event in events:
        count += _event_text(event) is not None
        if count == CUT:
            break
    t_stop = now()
    await events.aclose()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await sink_receipt(guarded, reason="consumer_closed", category="client")
    await engine.aclose()


@native_only
async def test_async_engine_stream_task_cancel_stops_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    engine = _engine(up, asynchronous=True)

    async def consume(reading: asyncio.Event) -> None:
        async for event in engine.stream(_request(LONG)):
            if _event_text(event):
                reading.set()

    receipt = await cancelled_while_reading(up, guarded, consume)
    assert receipt.provider == "openai"
    await engine.aclose()


@native_only
def test_engine_complete_is_no_stream_and_gets_no_receipt(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    instrument_with(stall_timeout=STALL)
    engine = _engine(up)
    response = engine.complete(_request(SHORT))
    record = the_record(up)
    assert record.wait_done(WAIT) and record.completed and not record.stream, record
    assert response is not None
    assert sink.receipts == []
    engine.close()
