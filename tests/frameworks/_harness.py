"""Shared checks of the frameworks tier: the upstream's own record says whether it stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from streamguard.testing import InMemoryReceiptSink, RequestRecord, Upstream

INTERVAL = 0.02  # seconds per token at the upstream
STALL = 0.4  # instrument(stall_timeout=...): break+keep is stopped by the stall timer
CUT = 5  # units a consumer takes before it stops
LONG = 400  # tokens of a stream that must be cut (8 s): it cannot end on its own in time
SHORT = 8  # tokens of a stream that runs to the end
MS = 1_000_000
STOP_BOUND_NS = 50 * MS  # DESIGN G1: stop signal to upstream disconnect
WAIT = 5.0


def now() -> int:
    return time.monotonic_ns()


def the_record(up: Upstream, n: int = 1) -> RequestRecord:
    """The last of the first ``n`` requests (frameworks may send more than one)."""
    return up.wait_for_requests(n, timeout=WAIT)[n - 1]


def stopped_at_once(record: RequestRecord, t_stop: int) -> None:
    """The upstream saw the disconnect within the G1 bound of ``t_stop`` and generated at
    most one token interval after it."""
    assert record.wait_done(WAIT), "the upstream is still generating"
    assert record.outcome == "disconnected", record.outcome
    assert record.disconnected_ns is not None
    assert record.disconnected_ns - t_stop <= STOP_BOUND_NS, (record.disconnected_ns - t_stop) / MS
    assert record.tokens_after(t_stop) <= 2


async def cancelled_while_reading(
    up: Upstream,
    sink: InMemoryReceiptSink,
    consume: Callable[[asyncio.Event], Awaitable[object]],
    *,
    settle: float = 0.0,
) -> Any:
    """Run ``consume(reading)`` as a task; once it sets ``reading`` (and ``settle`` seconds
    later), cancel the task: the task ends in CancelledError, the model stream stops at once,
    and there is one ``client`` receipt, which is returned."""
    reading = asyncio.Event()
    task = asyncio.create_task(consume(reading))
    await reading.wait()
    if settle:
        await asyncio.sleep(settle)
    t_stop = now()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await sink.wait_for_async(1)
    return one_receipt(sink, category="client")


def guard_state() -> list[dict[str, Any]]:
    """What the guard knows of its open streams (for a failure message: why no stop came)."""
    from streamguard import _runtime

    t = now()
    state = []
    for core in _runtime.get_runtime().active():
        home = core._home
        entry = core.timer_entry
        timers = home.timers if home is not None else None
        state.append(
            {
                "stream": core.stream_id,
                "stop": core.stop_reason,
                "in_read": core.in_read,
                "watch": core.watch,
                "ms_since_last": (t - core.t_last) / MS,
                "timer_due_in_ms": None if entry is None else (entry.due - t) / MS,
                "loop": None if home is None else (home.name, home.running()),
                "loop_alarm_in_ms": None
                if timers is None or timers._alarm_due is None
                else (timers._alarm_due - t) / MS,
                "loop_watched": None if timers is None else len(timers),
            }
        )
    return state


def stopped_by_stall(record: RequestRecord, t_stop: int) -> None:
    """Break and keep: the stall timer stops it, well before the answer would have ended."""
    assert record.wait_done(WAIT), f"the upstream is still generating; guard: {guard_state()}"
    assert record.outcome == "disconnected", record.outcome
    assert record.disconnected_ns is not None
    assert record.disconnected_ns - t_stop < (STALL + 1.5) * 1e9
    assert record.tokens_generated < record.planned_tokens


def one_receipt(sink: InMemoryReceiptSink, **expected: Any) -> Any:
    """Exactly one receipt, whose fields include ``expected`` (reason, category, provider...)."""
    (receipt,) = sink.wait_for(1, timeout=WAIT)
    time.sleep(0.05)  # a second receipt would arrive about now
    assert len(sink.receipts) == 1, [r.reason for r in sink.receipts]
    got = {key: getattr(receipt, key) for key in expected}
    assert got == expected, got
    return receipt


def completed_with_server_usage(
    sink: InMemoryReceiptSink, record: RequestRecord, **expected: Any
) -> Any:
    """One ``completed`` receipt whose token counts are the ones the server reported."""
    receipt = one_receipt(sink, outcome="completed", reason="completed", **expected)
    assert record.wait_done(WAIT) and record.completed, record.outcome
    tokens = receipt.tokens
    assert (tokens.usage_source, tokens.produced, tokens.input) == (
        "provider",
        record.tokens_generated,
        record.input_tokens,
    ), (tokens, record.tokens_generated, record.input_tokens)
    return receipt
