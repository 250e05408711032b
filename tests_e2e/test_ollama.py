"""The real-model tier against a real Ollama, when one is given.

    STREAMGUARD_E2E_OLLAMA_URL=http://127.0.0.1:11434 STREAMGUARD_E2E_OLLAMA_MODEL=llama3.2 \\
        make e2e

Ollama's generation cannot be observed from here (no per-token log, maybe another machine), so
these scenarios check what the client side can: exactly one receipt with the right reason, and
the time from the stop signal to the upstream connection being closed (G1: <= 50 ms). The
llama.cpp scenarios (test_llama_cpp.py) prove that closing is what stops a real engine.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamguard import Receipt, StreamCancelled
from streamguard.testing.sinks import InMemoryReceiptSink

from ._results import Results

pytestmark = pytest.mark.timeout(300)

URL = os.environ.get("STREAMGUARD_E2E_OLLAMA_URL", "")
MODEL = os.environ.get("STREAMGUARD_E2E_OLLAMA_MODEL", "") or "llama3.2"
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
LONG = 400  # num_predict of a stream that is cut: a real model should still be talking
CUT = 5
STALL = 1.0
DEADLINE = 2.0
MS = 1_000_000
CLOSE_BOUND_MS = 50.0
TIMER_SLACK_NS = 250 * MS


@pytest.fixture(scope="module")
def ollama_sdk() -> Any:
    if not URL:
        pytest.skip(
            "no real Ollama: set STREAMGUARD_E2E_OLLAMA_URL (e.g. http://127.0.0.1:11434) and "
            "optionally STREAMGUARD_E2E_OLLAMA_MODEL (default llama3.2, must be pulled)"
        )
    import ollama

    return ollama


@pytest.fixture
def client(ollama_sdk: Any) -> Iterator[Any]:
    c = ollama_sdk.Client(host=URL)
    yield c
    c._client.close()


@pytest.fixture
def aclient(ollama_sdk: Any) -> Any:
    return ollama_sdk.AsyncClient(host=URL)


def text(chunk: Any) -> str:
    return (chunk.message.content if chunk.message is not None else None) or ""


def mono(unix_ns: int) -> int:
    return unix_ns - (time.time_ns() - time.monotonic_ns())


def one_receipt(sink: InMemoryReceiptSink) -> Receipt:
    sink.wait_for(1, timeout=10)
    time.sleep(0.2)
    receipts = sink.receipts
    assert len(receipts) == 1, f"expected exactly one receipt, got {len(receipts)}"
    return receipts[0]


def open_stream(client: Any, num_predict: int = LONG) -> Any:
    return client.chat(
        model=MODEL, messages=PROMPT, stream=True, options={"num_predict": num_predict}
    )


def take(stream: Any) -> list[str]:
    texts: list[str] = []
    for chunk in stream:
        if piece := text(chunk):
            texts.append(piece)
            if len(texts) == CUT:
                break
    return texts


def check_cut(
    receipt: Receipt, reason: str, t_signal: int | None, results: Results, scenario: str
) -> None:
    assert (receipt.provider, receipt.model) == ("ollama", MODEL)
    assert (receipt.outcome, receipt.reason) == ("cancelled", reason)
    times = receipt.times
    assert times.stop_requested is not None, times
    assert times.upstream_closed is not None, times
    close_ms = (times.upstream_closed - times.stop_requested) / MS
    t_stop = mono(times.stop_requested)
    if t_signal is not None:  # the consumer's own action: the guard saw it at once
        assert -5 <= (t_stop - t_signal) / MS <= CLOSE_BOUND_MS
    results.ollama.append((scenario, receipt.reason, receipt.tokens.produced, close_ms))
    assert close_ms <= CLOSE_BOUND_MS, f"{close_ms:.1f} ms from stop to upstream closed"
    tokens = receipt.tokens
    assert tokens.produced >= tokens.committed >= tokens.consumed, tokens


def test_exhaust_completes_with_ollama_usage(
    client: Any, sink: InMemoryReceiptSink, instrument: Callable[..., None], results: Results
) -> None:
    instrument()
    texts = [piece for chunk in open_stream(client, 20) if (piece := text(chunk))]
    receipt = one_receipt(sink)
    assert (receipt.outcome, receipt.reason) == ("completed", "completed")
    assert receipt.tokens.usage_source == "provider"  # eval_count of the final object
    assert 0 < receipt.tokens.produced <= 20 + 1
    assert receipt.tokens.committed == len(texts)
    results.ollama.append(("exhaust", receipt.reason, receipt.tokens.produced, None))


def test_break_then_drop(
    client: Any, sink: InMemoryReceiptSink, instrument: Callable[..., None], results: Results
) -> None:
    instrument()
    stream = open_stream(client)
    assert len(take(stream)) == CUT
    t_stop = time.monotonic_ns()
    del stream
    check_cut(one_receipt(sink), "consumer_closed", t_stop, results, "break-then-drop")


def test_close(
    client: Any, sink: InMemoryReceiptSink, instrument: Callable[..., None], results: Results
) -> None:
    instrument()
    stream = open_stream(client)
    assert len(take(stream)) == CUT
    t_stop = time.monotonic_ns()
    stream.close()
    check_cut(one_receipt(sink), "consumer_closed", t_stop, results, "close")


def test_exception_in_loop(
    client: Any, sink: InMemoryReceiptSink, instrument: Callable[..., None], results: Results
) -> None:
    instrument()
    stops: list[int] = []
    n = 0
    try:
        for chunk in open_stream(client):
            n += bool(text(chunk))
            if n == CUT:
                stops.append(time.monotonic_ns())
                raise KeyError("the application's own error")
    except KeyError:
        pass
    assert stops, "the stream ended before the consumer raised"
    check_cut(one_receipt(sink), "consumer_closed", stops[0], results, "exception-in-loop")


def test_break_then_keep_is_closed_by_the_stall_timer(
    client: Any, sink: InMemoryReceiptSink, instrument: Callable[..., None], results: Results
) -> None:
    instrument(stall_timeout=STALL)
    stream = open_stream(client)
    assert len(take(stream)) == CUT
    t_stop = time.monotonic_ns()
    receipt = one_receipt(sink)
    late = mono(receipt.times.stop_requested or 0) - (t_stop + int(STALL * 1e9))
    assert -5 * MS <= late <= TIMER_SLACK_NS, f"{late / MS:.0f} ms"
    check_cut(receipt, "consumer_stalled", None, results, "break-then-keep")
    stream.close()


def test_deadline(
    client: Any, sink: InMemoryReceiptSink, instrument: Callable[..., None], results: Results
) -> None:
    instrument(deadline=DEADLINE)
    with pytest.raises(StreamCancelled) as info:
        for _ in open_stream(client):
            pass
    assert info.value.reason == "deadline_exceeded"
    check_cut(one_receipt(sink), "deadline_exceeded", None, results, "deadline")


async def test_async_task_cancelled(
    aclient: Any, sink: InMemoryReceiptSink, instrument: Callable[..., None], results: Results
) -> None:
    instrument()
    stream = await aclient.chat(
        model=MODEL, messages=PROMPT, stream=True, options={"num_predict": LONG}
    )
    got = asyncio.Event()

    async def consumer() -> None:
        n = 0
        async for chunk in stream:
            n += bool(text(chunk))
            if n == CUT:
                got.set()
                await asyncio.sleep(3600)

    task = asyncio.create_task(consumer())
    await asyncio.wait_for(got.wait(), 120)
    t_stop = time.monotonic_ns()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await sink.wait_for_async(1, timeout=10)
    await asyncio.sleep(0.2)
    (receipt,) = sink.receipts
    check_cut(receipt, "consumer_cancelled", t_stop, results, "async-task-cancelled")
    await stream.aclose()
    await aclient._client.aclose()
