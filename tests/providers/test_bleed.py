"""The bleed table of PROVIDERS.md with StreamGuard on: 0 in every cell.

Local upstream at one token per 20 ms; the consumer stops after 10 items the way the row says;
the upstream counts what it generated in the next 3 s. Without a guard the rows measure ~145
(the stream runs on), with one they must measure 0, allowing 1 for the token in flight when the
signal came. A row returns as soon as the upstream request has ended: nothing can be generated
for it after that, so the count over the 3 s window is already final. The FastAPI relay rows
belong to the ASGI integration's suite.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from streamguard.testing import InMemoryReceiptSink, RequestRecord, Upstream

from . import _loops
from ._adapters import ADAPTERS
from ._harness import CUT, Case

WINDOW_NS = 3_000_000_000
STREAM = 200  # tokens: 4 s at 20 ms, longer than the consumer's 10 items plus the window
STALL = 0.5  # stall_timeout of the "object kept" row


def generated_in_window(record: RequestRecord, t_stop: int) -> int:
    return record.tokens_after(t_stop) - record.tokens_after(t_stop + WINDOW_NS)


def wait_window(record: RequestRecord, t_stop: int) -> None:
    record.wait_done(max(0.0, (t_stop + WINDOW_NS - time.monotonic_ns()) / 1e9))


async def await_window(record: RequestRecord, t_stop: int) -> None:
    await _loops.to_thread(wait_window, record, t_stop)  # the loop runs the async close


# Each row: open, read 10 items, stop the row's way; returns (record, t_stop). The stream is
# built inside so that only the row's own references keep it.


def sync_break_object_kept(c: Case) -> tuple[RequestRecord, int]:
    stream = c.open(STREAM)
    c.take(stream, CUT)
    t_stop = time.monotonic_ns()
    record = c.record()
    wait_window(record, t_stop)
    assert stream is not None  # kept for the whole window
    # Kept objects are closed by the stall timer: the promise of 0 holds from when it fires.
    return record, t_stop + int(STALL * 1e9)


def sync_del(c: Case) -> tuple[RequestRecord, int]:
    stream = c.open(STREAM)
    c.take(stream, CUT)
    t_stop = time.monotonic_ns()
    del stream
    record = c.record()
    wait_window(record, t_stop)
    return record, t_stop


async def async_del(c: Case) -> tuple[RequestRecord, int]:
    stream = await c.open(STREAM)
    await c.atake(stream, CUT)
    t_stop = time.monotonic_ns()
    del stream
    record = c.record()
    await await_window(record, t_stop)
    return record, t_stop


async def async_close(c: Case) -> tuple[RequestRecord, int]:
    stream = await c.open(STREAM)
    await c.atake(stream, CUT)
    t_stop = time.monotonic_ns()
    await c.adapter.aclose(stream)
    record = c.record()
    await await_window(record, t_stop)
    return record, t_stop


async def task_cancelled_inside_consumer_code(c: Case) -> tuple[RequestRecord, int]:
    stream = await c.open(STREAM)
    tenth = anyio.Event()

    async def consumer() -> None:
        items = 0
        async for chunk in stream:
            if c.text(chunk):
                items += 1
                if items == CUT:
                    tenth.set()
                    await _loops.sleep(3600)  # the consumer's own work, cancelled

    t_stop = await _loops.cancel_when(consumer, tenth)
    record = c.record()
    await await_window(record, t_stop)
    return record, t_stop


Row = Callable[[Case], Any]
ROWS: dict[str, tuple[bool, Row]] = {
    "sync-break-object-kept": (False, sync_break_object_kept),
    "sync-del": (False, sync_del),
    "async-del": (True, async_del),
    "async-close": (True, async_close),
    "task-cancelled-inside-consumer-code": (True, task_cancelled_inside_consumer_code),
}


@pytest.mark.parametrize("row", list(ROWS))
async def test_bleed_with_streamguard_is_zero(
    row: str,
    provider: str,
    up: Upstream,
    sink: InMemoryReceiptSink,
    instrument_with: Callable[..., None],
) -> None:
    instrument_with(stall_timeout=STALL)
    is_async, stop = ROWS[row]
    case = Case(ADAPTERS[provider], is_async, up, sink)
    try:
        if is_async:
            result: Awaitable[tuple[RequestRecord, int]] = stop(case)
            record, t_from = await result
        else:
            record, t_from = await _loops.to_thread(stop, case)
    finally:
        await case.aclose()
    generated = generated_in_window(record, t_from)
    assert generated <= 1, (
        f"{provider} {row}: the upstream generated {generated} tokens in the 3 s after the "
        f"consumer stopped (request outcome {record.outcome!r})"
    )
    assert record.outcome == "disconnected"
