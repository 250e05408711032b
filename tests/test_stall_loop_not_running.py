"""The stall clock of an async stream whose event loop does not run: it is a stalled consumer.

A sync bridge (pydantic-ai's ``run_stream_sync``, a sync view over an async client) runs the
event loop only while its caller waits for the next item: a caller that breaks out and keeps
the result leaves the loop stopped, nobody reads, and the upstream goes on generating. The
loop's own timers cannot fire then, so the watchdog thread notices: once ``stall_timeout``
has passed in wall time it shuts the socket down from its thread and seals the one receipt
(``consumer_stalled``, client) though the loop never runs again. The same holds for a loop
that was closed, whose thread has exited, or a trio run that ended with the stream kept.

A loop that runs again afterwards hands the stop to the consumer cleanly: the next read raises
``StreamCancelled`` once, then the iteration ends, and there is no second receipt. A loop that
runs but is late (blocked) is loop lag, not a stall (also ``tests/test_overload.py``).

Real openai ``AsyncOpenAI`` over HTTP on loopback against the project's upstream; the upstream's
own record says when it saw the disconnect and how much it generated.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import streamguard
from streamguard import StreamCancelled
from streamguard.testing import InMemoryReceiptSink, RequestRecord, Upstream

openai = pytest.importorskip("openai")

STALL = 0.4  # stall_timeout of these tests
CUT = 5  # chunks the consumer takes before it stops asking
LONG = 400  # tokens at 20 ms: 8 s, it cannot end on its own within the bounds below
# The watchdog looks at loops every 250 ms: cut within STALL + that, with a generous margin for
# a loaded machine. The bound is a correctness bound (the stream was cut at all, and by the
# stall clock, not by the end of the answer), not a timing figure.
BOUND_NS = int((STALL + 2.0) * 1e9)
WAIT = 5.0
# The application closed the loop with the stream's connection open: once the stream is
# collected, its transport and socket are too, unclosed (their fd is shut down, not closed:
# closing it is the loop's work), and warn as the bare SDK's do.
CLOSED_WITH_THE_CONNECTION_OPEN = pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")


def _now() -> int:
    return time.monotonic_ns()


def _client(up: Upstream) -> Any:
    return openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="test", max_retries=0)


async def _open_and_take(client: Any, n: int = CUT) -> Any:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "say something long"}],
        max_tokens=LONG,
        stream=True,
    )
    taken = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            taken += 1
            if taken == n:
                break
    return stream  # kept: nothing asks for the next chunk


def _cut_by_the_stall_clock(record: RequestRecord, t_stop: int) -> None:
    """The upstream saw the socket close within the bound, long before the answer's end."""
    assert record.wait_done(WAIT), "the upstream is still generating"
    assert record.outcome == "disconnected", record.outcome
    assert record.disconnected_ns is not None
    waited = record.disconnected_ns - t_stop
    assert STALL * 1e9 <= waited < BOUND_NS, waited / 1e9
    assert record.tokens_generated < record.planned_tokens


def _the_stall_receipt(sink: InMemoryReceiptSink, stream: Any) -> Any:
    (receipt,) = sink.wait_for(1, timeout=WAIT)
    time.sleep(0.05)  # a second receipt would arrive about now
    assert len(sink.receipts) == 1, [r.reason for r in sink.receipts]
    handle = streamguard.handle_of(stream)
    assert handle is not None
    assert {
        "stream_id": receipt.stream_id,
        "outcome": receipt.outcome,
        "reason": receipt.reason,
        "category": receipt.category,
        "provider": receipt.provider,
    } == {
        "stream_id": handle.stream_id,
        "outcome": "cancelled",
        "reason": "consumer_stalled",
        "category": "client",
        "provider": "openai",
    }
    assert "event loop was not running" in (receipt.detail or "")
    assert receipt.tokens.committed >= CUT
    assert receipt.times.upstream_closed is not None
    assert receipt.times.upstream_closed >= receipt.times.stop_requested
    return receipt


async def _read_next(stream: Any) -> Any:
    return await stream.__anext__()


def test_a_stream_on_a_stopped_loop_is_cut_and_sealed_while_the_loop_stays_stopped(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    instrument_with(stall_timeout=STALL)
    loop = asyncio.new_event_loop()
    try:
        client = _client(up)
        stream = loop.run_until_complete(_open_and_take(client))
        t_stop = _now()
        assert not loop.is_running()  # from here on nothing runs this loop
        _cut_by_the_stall_clock(up.wait_for_requests(1)[0], t_stop)
        _the_stall_receipt(sink, stream)

        # The loop runs again: the consumer gets the stop once, then the stream just ends.
        with pytest.raises(StreamCancelled) as raised:
            loop.run_until_complete(_read_next(stream))
        assert raised.value.reason == "consumer_stalled"
        with pytest.raises(StopAsyncIteration):
            loop.run_until_complete(_read_next(stream))
        loop.run_until_complete(stream.close())
        loop.run_until_complete(client.close())
        assert len(sink.receipts) == 1
    finally:
        loop.close()


@CLOSED_WITH_THE_CONNECTION_OPEN
def test_a_stream_on_a_closed_loop_is_cut_and_sealed(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    instrument_with(stall_timeout=STALL)
    loop = asyncio.new_event_loop()
    stream = loop.run_until_complete(_open_and_take(_client(up)))
    t_stop = _now()
    loop.close()  # with the stream and its connection still open
    _cut_by_the_stall_clock(up.wait_for_requests(1)[0], t_stop)
    _the_stall_receipt(sink, stream)


@CLOSED_WITH_THE_CONNECTION_OPEN
def test_a_stream_whose_loop_thread_has_exited_is_cut_and_sealed(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    # A sync request handler on a worker thread ran the loop and returned; the thread is gone,
    # the loop (never closed) and the stream are kept by the application.
    instrument_with(stall_timeout=STALL)
    kept: dict[str, Any] = {}

    def handler() -> None:
        loop = asyncio.new_event_loop()
        kept["loop"] = loop
        kept["stream"] = loop.run_until_complete(_open_and_take(_client(up)))
        kept["t_stop"] = _now()

    thread = threading.Thread(target=handler)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive() and "stream" in kept
    try:
        _cut_by_the_stall_clock(up.wait_for_requests(1)[0], kept["t_stop"])
        _the_stall_receipt(sink, kept["stream"])
    finally:
        kept["loop"].close()


def test_a_stream_kept_after_its_trio_run_ended_is_stopped_at_the_end_of_the_run(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    # trio finalises the run's async generators (the SDK's response) as the run ends; the
    # stream is stopped and sealed then, not after the stall timeout.
    trio = pytest.importorskip("trio")
    instrument_with(stall_timeout=30.0)
    kept: list[Any] = []

    async def main() -> None:
        kept.append(await _open_and_take(_client(up)))

    trio.run(main)
    t_end = _now()
    record = up.wait_for_requests(1)[0]
    assert record.wait_done(WAIT) and record.outcome == "disconnected", record.outcome
    assert record.tokens_generated < record.planned_tokens
    (receipt,) = sink.wait_for(1, timeout=WAIT)
    assert (receipt.reason, receipt.category, receipt.detail) == (
        "consumer_closed",
        "client",
        "the trio run iterating the stream ended",
    )
    assert receipt.times.finalized <= time.time_ns()
    assert _now() - t_end < 1e9  # sealed at the end of the run, not at the 30 s stall
    time.sleep(0.05)
    assert len(sink.receipts) == 1


def test_a_stop_from_another_thread_while_the_loop_is_stopped_seals_at_once(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    # cancel_stream by id (an operator, another request) does not wait for the loop to run.
    instrument_with(stall_timeout=30.0)
    loop = asyncio.new_event_loop()
    try:
        stream = loop.run_until_complete(_open_and_take(_client(up)))
        handle = streamguard.handle_of(stream)
        assert handle is not None
        t_stop = _now()
        assert streamguard.cancel_stream(handle.stream_id)
        record = up.wait_for_requests(1)[0]
        assert record.wait_done(WAIT) and record.outcome == "disconnected", record.outcome
        assert record.disconnected_ns is not None
        assert record.disconnected_ns - t_stop <= 50_000_000  # DESIGN G1
        (receipt,) = sink.wait_for(1, timeout=WAIT)
        assert (receipt.reason, receipt.category) == ("manual", "operator")
        with pytest.raises(StreamCancelled):
            loop.run_until_complete(_read_next(stream))
        time.sleep(0.05)
        assert len(sink.receipts) == 1
    finally:
        loop.close()


def test_a_loop_that_runs_but_is_blocked_is_lag_not_a_stall(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    # The consumer keeps asking, but the loop is blocked for longer than the stall timeout
    # (a blocking call): the loop is running, late, and the watchdog leaves it to its timers.
    instrument_with(stall_timeout=STALL)

    async def main() -> tuple[int, Any]:
        client = _client(up)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=40,
            stream=True,
        )
        pieces = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                if pieces in (3, 6):
                    time.sleep(4 * STALL)  # noqa: ASYNC251 - the point: the loop is blocked
        await client.close()
        return pieces, stream

    pieces, stream = asyncio.run(main())
    assert pieces == 40
    (receipt,) = sink.wait_for(1, timeout=WAIT)
    handle = streamguard.handle_of(stream)
    assert handle is not None
    assert (receipt.reason, receipt.stream_id) == ("completed", handle.stream_id)
