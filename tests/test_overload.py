"""Overload: loop lag is not a stall. 5,000 concurrent async streams on one loop.

Every consumer keeps asking for the next chunk (and sends each one on, as a WebSocket or SSE
handler does), but the loop is overloaded: 5,000 streams
chunk by chunk, and a task that blocks the loop for longer than the stall timeout (a blocking
call, a long GC pause, a starved process). No consumer asked during the block, yet none
stopped asking: all 5,000 streams complete. One consumer among them really stops (it breaks
out and holds its stream): it is still cut as ``consumer_stalled``.

The old rule, which counted every nanosecond since the last ask (``looptimers``' private
``_LAG_COMPENSATION`` off), cuts the reading consumers as stalled in the same scenario: the
blocks are longer than the stall timeout, so that is deterministic, not a timing accident.

Here the stall timeout is scaled down (0.5 s, blocks of 1 s) to keep the default suite quick;
``tests_soak/test_overload_default_timeout.py`` (``make soak``) runs the same scenario with the
default 30 s stall timeout on a machine loaded by CPU hogs on every core.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import streamguard
from streamguard import StreamCancelled
from streamguard._engine import looptimers
from streamguard._receipts.signing import HmacSigner

STREAMS = 5000
CHUNKS = 20


class CountingSink:
    def __init__(self) -> None:
        self.reasons: collections.Counter[str] = collections.Counter()
        self.stopped_reason: str | None = None

    def emit(self, receipt: Any) -> None:
        self.reasons[receipt.reason] += 1
        if receipt.attributes.get("role") == "stops":
            self.stopped_reason = receipt.reason


def run_overload(
    *, stall_timeout: float | None, block: float, blocks: int, streams: int = STREAMS
) -> tuple[CountingSink, collections.Counter[str], float]:
    """``streams`` concurrent readers and one consumer that stops, on a loop blocked
    ``blocks`` times for ``block`` seconds. Returns the receipts' reasons (sink), what the
    readers saw, and how long the stopped consumer waited for its cut (seconds)."""
    sink = CountingSink()
    options: dict[str, Any] = {} if stall_timeout is None else {"stall_timeout": stall_timeout}
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"), **options)
    outcome: collections.Counter[str] = collections.Counter()

    async def source() -> AsyncIterator[str]:  # chunks already received: no wait upstream
        for _ in range(CHUNKS):
            await asyncio.sleep(0)
            yield "tok"

    async def reader() -> None:
        stream = streamguard.GuardedAsyncIterator(source(), provider="openai", model="m")
        n = 0
        try:
            async for _ in stream:
                n += 1
                await asyncio.sleep(0.05)  # sends the chunk on (a WebSocket, an SSE response)
        except StreamCancelled as exc:
            outcome[f"cut: {exc.reason}"] += 1
            return
        outcome["read all" if n == CHUNKS else f"read {n}"] += 1

    async def hog() -> None:
        for _ in range(blocks):
            await asyncio.sleep(0.3)
            time.sleep(block)  # noqa: ASYNC251 - the point: the loop is blocked, nobody on it can act

    async def main() -> float:
        stops = streamguard.GuardedAsyncIterator(
            source(), provider="openai", model="m", attributes={"role": "stops"}
        )
        async for _ in stops:
            break  # the consumer stops asking and holds the stream
        t_stop = time.monotonic()
        await asyncio.gather(hog(), *(reader() for _ in range(streams)))
        while sink.stopped_reason is None and time.monotonic() - t_stop < 120:  # noqa: ASYNC110 - a sink, not an event
            await asyncio.sleep(0.05)
        return time.monotonic() - t_stop

    try:
        waited = asyncio.run(main())
    finally:
        streamguard.uninstrument()
    return sink, outcome, waited


@pytest.fixture
def old_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(looptimers, "_LAG_COMPENSATION", False)


def test_5000_reading_consumers_complete_on_a_lagging_loop_and_a_stopped_one_is_cut() -> None:
    sink, outcome, _ = run_overload(stall_timeout=0.5, block=1.0, blocks=2)
    assert outcome == {"read all": STREAMS}
    assert sink.reasons["completed"] == STREAMS
    assert sink.stopped_reason == "consumer_stalled"
    assert sum(sink.reasons.values()) == STREAMS + 1


def test_the_old_rule_cuts_reading_consumers_in_the_same_scenario(old_rule: None) -> None:
    sink, outcome, _ = run_overload(stall_timeout=0.5, block=1.0, blocks=2)
    # Every reader waiting for its next chunk when the loop blocked for 1 s was cut.
    assert outcome["cut: consumer_stalled"] > STREAMS // 2, outcome
    assert sink.reasons["consumer_stalled"] == outcome["cut: consumer_stalled"] + 1
    assert sink.stopped_reason == "consumer_stalled"


def test_a_stopped_consumer_on_an_idle_loop_is_cut_promptly() -> None:
    """Lag compensation forgives loop lag only: with no overload, the cut comes after about
    ``stall_timeout`` even while hundreds of other streams' alarms fire every millisecond."""
    sink = CountingSink()
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"))

    async def source() -> AsyncIterator[str]:
        for _ in range(5):
            await asyncio.sleep(0)
            yield "tok"

    async def main() -> None:
        held = []
        for _ in range(300):  # each stops after one chunk; due times 1 ms apart
            stream = streamguard.GuardedAsyncIterator(
                source(), provider="openai", model="m", stall_timeout=0.05
            )
            async for _ in stream:
                break
            held.append(stream)
            await asyncio.sleep(0.001)
        # The last one stopped ~0 s ago: all are cut within a generous bound of 0.05 s.
        deadline = time.monotonic() + 2.0
        while sum(sink.reasons.values()) < 300 and time.monotonic() < deadline:  # noqa: ASYNC110 - a sink
            await asyncio.sleep(0.01)

    try:
        asyncio.run(main())
    finally:
        streamguard.uninstrument()
    assert sink.reasons == {"consumer_stalled": 300}
