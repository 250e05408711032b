"""Nothing of a stream outlives it: a stopped or abandoned guarded stream is collectable.

A worker that consumes many streams keeps none of them alive, whichever way each one ended
(exhausted, break + drop, close, an exception in the loop, a budget stop, an upstream error,
the stall timer, task cancellation). Each case opens a real openai or anthropic stream over
loopback, ends it, lets go of it (and of any exception it raised), and then the stream object,
its guard's core and its HTTP response must all be gone after one collection.

And with no stream alive, ``uninstrument()`` removes the in-place stream-class patches at once
(they stay only while a stream guarded in place is alive: ``providers/_stainless._Classes``).
A stopped stream that something kept alive used to keep them installed for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

import streamguard
from conftest import _OTEL
from streamguard import Budget, BudgetExceeded, StreamCancelled
from streamguard._money.pricing import Pricing
from streamguard._receipts.signing import HmacSigner
from streamguard.providers import _stainless
from streamguard.testing import Fault, Upstream
from streamguard.testing.sinks import InMemoryReceiptSink

PROMPT: Any = [{"role": "user", "content": "hello there"}]
MODELS = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5"}
SYNC_PATHS = ("exhausted", "break_drop", "break_close", "loop_error", "budget", "upstream_error")
ASYNC_PATHS = (*SYNC_PATHS, "task_cancelled", "stalled")
REASONS = {
    "exhausted": "completed",
    "break_drop": "consumer_closed",
    "break_close": "consumer_closed",
    "loop_error": "consumer_closed",
    "budget": "budget_exceeded",
    "upstream_error": "upstream_error",
    "task_cancelled": "consumer_cancelled",
    "stalled": "consumer_stalled",
}


class Boom(Exception):
    pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.002) as up:
        yield up


@pytest.fixture(scope="module", autouse=True)
def _earlier_streams_gone() -> None:
    """What earlier tests left: the suite's in-memory log exporter keeps the last records, and
    an application's exception log (FastAPI's, say) holds that exception's frames and streams;
    garbage not yet collected was frozen by the conftest (``gc.freeze``) and is released here."""
    _OTEL.clear()
    gc.unfreeze()
    gc.collect()


@pytest.fixture(autouse=True)
def _uninstrument() -> Iterator[None]:
    yield
    streamguard.uninstrument()


def _instrument(sink: InMemoryReceiptSink, sdk: str, path: str) -> None:
    budgets = []
    if path == "budget":  # room for the prompt and about 10 of the 40 output tokens
        price = Pricing().price(sdk, MODELS[sdk])
        assert price is not None
        budgets.append(Budget(limit_usd=4 * price.input + 10 * price.output, name="small"))
    streamguard.instrument(
        sinks=[sink],
        signer=HmacSigner(bytes(32), key_id="t"),
        budgets=budgets,
        stall_timeout=0.05 if path == "stalled" else 30.0,
    )


def _create(sdk: str, client: Any, up: Upstream, path: str) -> Any:
    if path == "upstream_error":
        up.add_fault(Fault("reset", after_tokens=3))
    if sdk == "openai":
        return client.chat.completions.create(
            model=MODELS[sdk], messages=PROMPT, max_tokens=40, stream=True
        )
    return client.messages.create(model=MODELS[sdk], messages=PROMPT, max_tokens=40, stream=True)


def _refs(stream: Any) -> list[weakref.ref[Any]]:
    driver = stream.__dict__[_stainless.ATTR]
    assert driver is not None, "the stream is not guarded"
    return [weakref.ref(stream), weakref.ref(driver.core), weakref.ref(stream.response)]


def _sync_path(stream: Any, path: str) -> None:
    if path == "exhausted":
        for _ in stream:
            pass
    elif path in ("break_drop", "break_close"):
        for _ in stream:
            break
        if path == "break_close":
            stream.close()
    elif path == "loop_error":
        with contextlib.suppress(Boom):
            for _ in stream:
                raise Boom
    elif path == "budget":
        with contextlib.suppress(BudgetExceeded):
            for _ in stream:
                pass
    elif path == "upstream_error":
        with contextlib.suppress(openai.APIError, anthropic.APIError):
            for _ in stream:
                pass


def _alive(refs: list[weakref.ref[Any]]) -> list[str]:
    gc.collect()
    return [type(obj).__name__ for obj in (ref() for ref in refs) if obj is not None]


def _client(sdk: str, up: Upstream, *, is_async: bool) -> Any:
    if sdk == "openai":
        cls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
        return cls(base_url=up.openai_base_url, api_key="k", max_retries=0)
    cls = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
    return cls(base_url=up.anthropic_base_url, api_key="k", max_retries=0)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("path", SYNC_PATHS)
def test_stopped_sync_stream_is_collectable(upstream: Upstream, sdk: str, path: str) -> None:
    sink = InMemoryReceiptSink()
    _instrument(sink, sdk, path)
    with _client(sdk, upstream, is_async=False) as client:

        def run() -> list[weakref.ref[Any]]:
            stream = _create(sdk, client, upstream, path)
            refs = _refs(stream)
            _sync_path(stream, path)
            return refs

        refs = run()
        (receipt,) = sink.wait_for(1, 5)
        assert receipt.reason == REASONS[path]
        assert _alive(refs) == []
    streamguard.uninstrument()
    assert _stainless._classes == {}  # no stream alive: the class patches are gone
    assert "__del__" not in vars(openai.Stream)
    assert "__del__" not in vars(anthropic.Stream)


async def _async_path(stream: Any, path: str) -> None:
    if path == "exhausted":
        async for _ in stream:
            pass
    elif path in ("break_drop", "break_close"):
        async for _ in stream:
            break
        if path == "break_close":
            await stream.close()
    elif path == "loop_error":
        with contextlib.suppress(Boom):
            async for _ in stream:
                raise Boom
    elif path == "budget":
        with contextlib.suppress(BudgetExceeded):
            async for _ in stream:
                pass
    elif path == "upstream_error":
        with contextlib.suppress(openai.APIError, anthropic.APIError):
            async for _ in stream:
                pass
    elif path == "task_cancelled":

        async def consume() -> None:
            async for _ in stream:
                await asyncio.sleep(0.01)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        del task
    elif path == "stalled":  # the consumer stops asking and holds on until the timer cuts it
        async for _ in stream:
            break
        await asyncio.sleep(0.3)
        with contextlib.suppress(StreamCancelled):
            async for _ in stream:
                pass


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("path", ASYNC_PATHS)
def test_stopped_async_stream_is_collectable(upstream: Upstream, sdk: str, path: str) -> None:
    sink = InMemoryReceiptSink()
    _instrument(sink, sdk, path)

    async def main() -> list[weakref.ref[Any]]:
        async with _client(sdk, upstream, is_async=True) as client:

            async def run() -> list[weakref.ref[Any]]:
                stream = await _create(sdk, client, upstream, path)
                refs = _refs(stream)
                await _async_path(stream, path)
                return refs

            refs = await run()
            await sink.wait_for_async(1)  # an async close seals the receipt on the loop
            await asyncio.sleep(0.01)  # and its closing task ends right after
            # Still inside the loop and the task that consumed the stream: a long-lived task.
            assert _alive(refs) == []
            return refs

    refs = asyncio.run(main())
    (receipt,) = sink.receipts
    assert receipt.reason == REASONS[path]
    assert _alive(refs) == []
    streamguard.uninstrument()
    assert _stainless._classes == {}
    assert "__del__" not in vars(openai.AsyncStream)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_stream_its_task_returned_is_collectable_once_dropped(
    upstream: Upstream, sdk: str
) -> None:
    """A sync bridge runs the loop only to open the stream and take a little (the opening task
    returns the stream, which is then its result); the application drops the stream and runs
    the loop again. The guard used to keep the finished task, and the task its result: a
    cycle through asyncio's C task that the collector did not break."""
    sink = InMemoryReceiptSink()
    _instrument(sink, sdk, "break_drop")
    loop = asyncio.new_event_loop()
    client = _client(sdk, upstream, is_async=True)

    async def open_and_take() -> Any:
        stream = await _create(sdk, client, upstream, "break_drop")
        async for _ in stream:
            break
        return stream

    stream = loop.run_until_complete(open_and_take())
    refs = _refs(stream)
    del stream
    loop.run_until_complete(asyncio.sleep(0.05))  # the dropped stream's close runs
    loop.run_until_complete(client.close())
    loop.close()
    (receipt,) = sink.wait_for(1, 5)
    assert receipt.reason == "consumer_closed"
    assert _alive(refs) == []
