"""The async driver over plain async generators, including task ends and cancellation."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator

import pytest

from streamguard import GuardedAsyncIterator, StreamCancelled


class AsyncUpstream:
    def __init__(self, n: int = 100, delay: float = 0.001) -> None:
        self.n, self.delay = n, delay
        self.closes = 0
        self.closed = asyncio.Event()

    async def tokens(self) -> AsyncIterator[str]:
        for i in range(self.n):
            await asyncio.sleep(self.delay)
            yield f" w{i}"

    async def aclose(self) -> None:
        self.closes += 1
        self.closed.set()

    def guard(self, **kw: object) -> GuardedAsyncIterator[str]:
        return GuardedAsyncIterator(self.tokens(), aclose=self.aclose, model="m", **kw)  # type: ignore[arg-type]


async def one_receipt(sink):
    for _ in range(200):
        if sink.receipts:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)
    assert len(sink.receipts) == 1, sink.receipts
    return sink.receipts[0]


async def test_exhaust(runtime, sink) -> None:
    up = AsyncUpstream(n=5)
    assert [t async for t in up.guard()] == [f" w{i}" for i in range(5)]
    r = await one_receipt(sink)
    assert (r.outcome, r.tokens.produced, r.tokens.consumed) == ("completed", 5, 5)
    assert up.closes == 1


async def test_aclose_and_async_with(runtime, sink) -> None:
    up = AsyncUpstream()
    async with up.guard() as g:
        await g.__anext__()
    assert up.closes == 1
    assert (await one_receipt(sink)).reason == "consumer_closed"


async def test_break_then_drop(runtime, sink) -> None:
    up = AsyncUpstream()
    async for i in up.guard():
        if i == " w3":
            break
    await asyncio.wait_for(up.closed.wait(), 1)
    r = await one_receipt(sink)
    assert (r.reason, r.tokens.produced, r.tokens.consumed) == ("consumer_closed", 4, 3)


async def test_cancel_at_the_read_boundary(runtime, sink) -> None:
    up = AsyncUpstream(delay=0.05)
    g = up.guard()

    async def consume() -> None:
        async for _ in g:
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.12)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(up.closed.wait(), 1)
    assert (await one_receipt(sink)).reason == "consumer_cancelled"


async def test_task_cancelled_inside_consumer_code(runtime, sink) -> None:
    up = AsyncUpstream()
    g = up.guard()
    entered = asyncio.Event()

    async def consume() -> None:
        async for _ in g:
            entered.set()
            await asyncio.sleep(10)  # per-chunk work; the cancel lands here

    task = asyncio.create_task(consume())
    await entered.wait()
    task.cancel()
    t0 = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(up.closed.wait(), 1)
    assert time.monotonic() - t0 < 0.05
    r = await one_receipt(sink)
    assert (r.reason, r.category) == ("consumer_cancelled", "client")
    assert (r.tokens.committed, r.tokens.consumed) == (1, 0)


async def test_exception_inside_loop_in_a_task(runtime, sink) -> None:
    up = AsyncUpstream()
    g = up.guard()

    async def consume() -> None:
        async for _ in g:
            raise KeyError("bug")

    with pytest.raises(KeyError):
        await asyncio.create_task(consume())
    await asyncio.wait_for(up.closed.wait(), 1)
    assert (await one_receipt(sink)).reason == "consumer_closed"


async def test_task_that_returns_normally_does_not_cut_a_stream_handed_on(runtime, sink) -> None:
    up = AsyncUpstream(n=6)
    g = up.guard()
    first = await asyncio.wait_for(g.__anext__(), 1)  # wait_for runs it in its own task
    rest = [t async for t in g]
    assert [first, *rest] == [f" w{i}" for i in range(6)]
    assert (await one_receipt(sink)).reason == "completed"


async def test_drop_closes(runtime, sink) -> None:
    up = AsyncUpstream()
    g = up.guard()
    await g.__anext__()
    del g
    gc.collect()
    await asyncio.wait_for(up.closed.wait(), 1)
    assert (await one_receipt(sink)).reason == "consumer_closed"


async def test_stall_and_deadline_use_loop_timers(runtime, sink) -> None:
    up = AsyncUpstream()
    g = up.guard(stall_timeout=0.05)
    await g.__anext__()
    await asyncio.wait_for(up.closed.wait(), 1)
    with pytest.raises(StreamCancelled):
        await g.__anext__()
    assert (await one_receipt(sink)).reason == "consumer_stalled"
    assert len(runtime.watchdog) == 0  # async streams never touch the watchdog thread
