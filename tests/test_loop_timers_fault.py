"""A fault in one stream's timer must not cost the other streams of its loop their timers.

A loop's timers share one alarm (``looptimers.LoopTimers``). If the alarm's callback raised
part-way (one stream's state unreadable, one stop failing), the streams it had already taken
off the heap, and the alarm itself, were lost: a consumer that stopped asking on that loop was
then never cut. Here one of two stalled streams has a timer state that raises; the other is
still cut as ``consumer_stalled``, the fault is reported once, and the loop's timers go on
working for a stream opened afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import streamguard
from streamguard import _runtime
from streamguard.testing import InMemoryReceiptSink

STALL = 0.2


class _Unreadable:
    """Timer limits whose every read raises (a corrupted stream state)."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"unreadable timer field {name}")


async def _source() -> AsyncIterator[str]:
    for _ in range(1000):
        await asyncio.sleep(0)
        yield "tok"


async def _take_two(stream: streamguard.GuardedAsyncIterator[str]) -> None:
    async for i, _tok in _aenumerate(stream):
        if i == 1:
            break  # and keep the stream: only the stall timer can stop it


async def _aenumerate(stream: streamguard.GuardedAsyncIterator[str]) -> AsyncIterator[Any]:
    i = 0
    async for item in stream:
        yield i, item
        i += 1


@pytest.fixture
def faults() -> Any:
    """The faults StreamGuard reports during the test (the autouse check expects none)."""
    yield _runtime.faults
    del _runtime.faults[:]


async def test_one_streams_timer_fault_leaves_the_others_cut_on_time(
    sink: InMemoryReceiptSink, instrument_with: Any, faults: list[Any]
) -> None:
    instrument_with(stall_timeout=STALL)
    broken = streamguard.GuardedAsyncIterator(_source(), provider="openai", model="m")
    healthy = streamguard.GuardedAsyncIterator(_source(), provider="openai", model="m")
    await _take_two(broken)
    broken._core.watch = _Unreadable()  # its timer now raises when it fires
    await _take_two(healthy)

    (receipt,) = await asyncio.wait_for(sink.wait_for_async(1), timeout=5)
    assert receipt.stream_id == healthy.stream_id
    assert receipt.reason == "consumer_stalled"
    assert [where for where, _exc in faults] == ["timers.evaluate"], faults

    # The loop's alarm survived: a stream opened now is still cut by its stall timer.
    later = streamguard.GuardedAsyncIterator(_source(), provider="openai", model="m")
    await _take_two(later)
    receipts = await asyncio.wait_for(sink.wait_for_async(2), timeout=5)
    assert [r.stream_id for r in receipts][1] == later.stream_id
    assert receipts[1].reason == "consumer_stalled"
    broken._core.watch = None
    await broken.aclose()
