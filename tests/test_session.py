"""StreamSession: the seed API, on the same engine."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import Any

import pytest

from streamguard import StreamCancelled, StreamSession


class LocalProducer:
    """Emits tokens on its own clock and honours cancel_event."""

    def __init__(self, n: int = 200, delay: float = 0.001) -> None:
        self.n, self.delay = n, delay
        self.saw_cancel = False
        self.emitted = 0

    async def run(
        self, *, out_q: asyncio.Queue[str], cancel_event: asyncio.Event, stats: dict[str, Any]
    ) -> None:
        stats["model"] = "local"
        for i in range(self.n):
            if cancel_event.is_set():
                self.saw_cancel = True
                return
            if self.delay:
                await asyncio.sleep(self.delay)
            await out_q.put(f" t{i}")
            self.emitted += 1


def test_seed_example_runs_as_written() -> None:
    # The product sheet's example, with a local producer in place of Ollama: start() outside
    # any event loop runs the producer on StreamGuard's background loop.
    producer = LocalProducer(n=20)
    session = StreamSession(
        producer=producer,
        N=5,
        M=2,
        stats={},
    )
    session.start()
    tokens = list(session)
    assert tokens == [f" t{i}" for i in range(20)]
    receipt = session.shutdown_sync()
    assert receipt is not None and receipt.outcome == "completed"
    assert session.stats["produced"] == session.stats["consumed"] == 20
    assert session.stats["model"] == "local"


async def test_cancel_mid_stream_stops_producer_and_counts(runtime, sink) -> None:
    producer = LocalProducer(n=10_000)
    stats: dict[str, Any] = {}
    session = StreamSession(producer=producer, N=5, M=2, stats=stats)
    session.start()
    got = []
    with pytest.raises(StreamCancelled) as info:  # the loop learns its answer was cut
        async for tok in session:
            got.append(tok)
            if len(got) == 10:
                session.cancel()
    assert info.value.reason == "manual"
    receipt = await session.shutdown()
    assert receipt is not None
    assert producer.saw_cancel
    assert (receipt.outcome, receipt.reason, receipt.category) == (
        "cancelled",
        "manual",
        "operator",
    )
    t = receipt.tokens
    assert t.committed == 10 * 1  # one estimated token per short token
    assert t.produced >= t.committed >= t.consumed
    assert t.produced - t.committed <= 5  # never more than N buffered
    assert t.prevented_estimate > 0
    assert stats["reason"] == "manual"


async def test_million_tokens_against_slow_consumer_stays_within_bounds(runtime) -> None:
    producer = LocalProducer(n=1_000_000, delay=0)
    stats: dict[str, Any] = {}
    session = StreamSession(producer=producer, N=8, M=2, stats=stats)
    tracemalloc.start()
    session.start()
    max_buffered = 0
    count = 0
    base = tracemalloc.get_traced_memory()[0]
    async for _ in session:
        count += 1
        max_buffered = max(max_buffered, stats["buffered"])
        if count % 1000 == 0:
            await asyncio.sleep(0)  # a slow consumer
        if count == 50_000:
            break
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    session.cancel()
    receipt = await session.shutdown()
    assert max_buffered <= 8
    assert producer.emitted <= 50_000 + 8 + 1
    assert peak < 2_000_000, peak  # bounded: nowhere near a million buffered strings
    assert receipt is not None and receipt.reason == "manual"


async def test_stalled_consumer_is_stopped(runtime, sink) -> None:
    session = StreamSession(producer=LocalProducer(n=1000, delay=0), N=4, M=2, stall_timeout=0.1)
    session.start()
    await session.__anext__()
    t0 = time.monotonic()
    for _ in range(100):
        if sink.receipts:
            break
        await asyncio.sleep(0.01)
    assert sink.receipts and sink.receipts[0].reason == "consumer_stalled"
    assert time.monotonic() - t0 < 0.5
    with pytest.raises(StreamCancelled):
        await session.__anext__()
    await session.shutdown()


class RaisingProducer:
    async def run(
        self, *, out_q: asyncio.Queue[str], cancel_event: asyncio.Event, stats: dict[str, Any]
    ) -> None:
        await out_q.put("a")
        raise RuntimeError("model crashed")


async def test_producer_that_raises_stops_safely(runtime, sink) -> None:
    session = StreamSession(producer=RaisingProducer(), N=4, M=2)
    session.start()
    got = []
    with pytest.raises(StreamCancelled) as info:
        async for tok in session:
            got.append(tok)
    assert info.value.reason == "upstream_error"
    receipt = await session.shutdown()
    assert receipt is not None
    assert (receipt.outcome, receipt.reason) == ("failed", "upstream_error")
    assert "RuntimeError" in (receipt.detail or "")


class StubbornProducer:
    async def run(
        self, *, out_q: asyncio.Queue[str], cancel_event: asyncio.Event, stats: dict[str, Any]
    ) -> None:
        while True:  # never looks at cancel_event
            await out_q.put("x")
            await asyncio.sleep(0.001)


async def test_producer_ignoring_cancel_is_cut_off_after_grace(runtime, sink) -> None:
    session = StreamSession(producer=StubbornProducer(), N=4, M=2, cancel_grace=0.1)
    session.start()
    await session.__anext__()
    t0 = time.monotonic()
    session.cancel()
    receipt = await session.shutdown()
    assert 0.09 < time.monotonic() - t0 < 1.0
    assert receipt is not None and receipt.reason == "manual"
    assert "ignored cancel_event" in (receipt.detail or "")


class SilentProducer:
    async def run(
        self, *, out_q: asyncio.Queue[str], cancel_event: asyncio.Event, stats: dict[str, Any]
    ) -> None:
        await cancel_event.wait()


async def test_producer_that_never_yields_is_stopped_as_idle(runtime, sink) -> None:
    session = StreamSession(producer=SilentProducer(), N=4, M=2, idle_timeout=0.1)
    session.start()
    with pytest.raises(StreamCancelled) as info:
        await session.__anext__()
    assert info.value.reason == "upstream_idle"
    receipt = await session.shutdown()
    assert receipt is not None and receipt.category == "upstream"
