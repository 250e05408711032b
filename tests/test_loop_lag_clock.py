"""Loop lag is forgiven where it happened, and nowhere else.

The stall clock of an async stream leaves out the time its loop ran late (``looptimers``). A
loop that lost seconds once (blocked, or stopped between ``run_until_complete`` calls while its
alarm was due) must not go on forgiving the consumers that stop asking after it: they are cut
``stall_timeout`` after their last ask, as on any loop. The clock used to keep a sample's
lateness when later, frequent probes merged into it, moving it forward each time: after one
long block, every consumer on that loop was forgiven all its stall for as long as the lateness
lasted, and the frameworks tier saw a LiteLLM consumer that broke out never cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import streamguard
from streamguard._engine.looptimers import BUCKET_NS, SLACK_NS, LagClock
from streamguard.testing import InMemoryReceiptSink

MS = 1_000_000


def _probe(clock: LagClock, due: int, now: int) -> None:
    clock.expect(due)
    clock.fired(now, due)


def test_lag_is_the_interval_a_late_probe_shows() -> None:
    clock = LagClock()
    _probe(clock, 1_000 * MS, 1_300 * MS)  # nobody could act from due + SLACK to now
    assert clock.lag(900 * MS, 2_000 * MS) == 300 * MS - SLACK_NS
    assert clock.lag(1_400 * MS, 2_000 * MS) == 0  # after it: nothing to forgive
    _probe(clock, 2_000 * MS, 2_000 * MS + SLACK_NS)  # on time, within the granularity
    assert clock.lag(1_400 * MS, 3_000 * MS) == 0


def test_one_long_block_is_not_forgiven_to_later_stalls() -> None:
    clock = LagClock()
    block_end = 10_000 * MS
    _probe(clock, 5_000 * MS, block_end)  # 5 s blocked (or stopped with its alarm due)
    # Then probes every 20 ms, each a little late, as on a loaded machine.
    now = block_end
    for _ in range(50):
        due = now + 14 * MS
        now = due + SLACK_NS + MS
        _probe(clock, due, now)
    asked = block_end + 100 * MS  # a consumer asked last after the block
    # Forgiven: the probes' own lateness after it, at most one bucket more; not the 0.9 s.
    assert clock.lag(asked, now) <= 50 * MS + BUCKET_NS
    assert clock.lag(asked, now) < (now - asked) / 2
    # A consumer that asked before the block is forgiven the block.
    assert clock.lag(4_000 * MS, now) >= 5_000 * MS - SLACK_NS


def test_a_pending_probe_overdue_is_lag_up_to_now() -> None:
    clock = LagClock()
    clock.expect(1_000 * MS)
    assert clock.lag(500 * MS, 1_200 * MS) == 200 * MS - SLACK_NS


async def _source() -> AsyncIterator[str]:
    for _ in range(100_000):
        await asyncio.sleep(0)
        yield "tok"


def test_consumers_after_a_stopped_loop_are_cut_on_time(
    sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    """A loop stopped between ``run_until_complete`` calls while one of its streams was watched
    (its alarm overdue all along), then running again with consumers that break out and keep
    their streams, a few milliseconds apart: each is cut about ``stall`` after its last ask."""
    stall = 0.1  # under the lag probe's period: the first probe after the restart is soon
    instrument_with(stall_timeout=stall)
    loop = asyncio.new_event_loop()
    try:
        kept: list[Any] = []

        async def open_and_keep() -> None:
            stream = streamguard.GuardedAsyncIterator(_source(), provider="openai", model="m")
            await anext(stream)
            kept.append(stream)

        loop.run_until_complete(open_and_keep())
        time.sleep(2.0)  # the loop does not run; the first stream is cut off-loop meanwhile

        async def break_and_keep_many() -> list[float]:
            streams = []
            for _ in range(10):
                stream = streamguard.GuardedAsyncIterator(_source(), provider="openai", model="m")
                await anext(stream)
                streams.append(stream)
                await asyncio.sleep(0.02)
            t_asked = time.monotonic()
            await sink.wait_for_async(11, timeout=5)
            kept.extend(streams)
            return [time.monotonic() - t_asked]

        (waited,) = loop.run_until_complete(break_and_keep_many())
        assert waited < stall + 1.0, waited  # the 2 s the loop did not run are not forgiven
        assert [r.reason for r in sink.receipts] == ["consumer_stalled"] * 11
    finally:
        loop.close()
