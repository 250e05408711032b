"""The consumer's own ``await close()`` runs the upstream's close inline, in the caller's task
(issue 16: no task, future or loop turn of its own), and keeps every guarantee of the close
that a task of its own ran: the upstream is disconnected even when the caller is cancelled
mid-close, the receipt is produced exactly once, a read pending in another task of the same
loop is woken at once, and a second close is a no-op. Every provider, asyncio and trio.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

import streamguard
from streamguard import handle_of

from . import _loops
from ._harness import CUT, Case, check_upstream_stopped


async def test_close_cancelled_mid_close_disconnects_and_seals_once(
    async_case: Case, instrumented: None
) -> None:
    # The caller's cancel scope is cancelled before the close starts: every checkpoint inside
    # the inline close (the SDK's own awaits) raises the cancellation at once.
    c = async_case
    stream = await c.open()
    texts = await c.atake(stream)
    assert len(texts) == CUT
    t_stop = time.monotonic_ns()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await c.adapter.aclose(stream)
    record, receipt = await c.afinished(), await c.areceipt()
    check_upstream_stopped(record, t_stop)
    assert (receipt.outcome, receipt.reason) == ("cancelled", "consumer_closed")
    assert receipt.tokens.produced >= CUT
    # A second close is a no-op: no second receipt, nothing raised.
    await c.adapter.aclose(stream)
    await c.areceipt()
    handle = handle_of(stream)
    assert handle is not None and handle.receipt is not None
    assert handle.receipt.stream_id == receipt.stream_id


async def test_close_from_another_task_wakes_a_pending_read_within_50ms(
    async_case: Case, instrumented: None
) -> None:
    # One task awaits the next chunk (a read in progress on the stream's loop) while another
    # closes the stream: the close shuts the socket first, so the reader's iteration ends
    # (the consumer closed it: a quiet stop) and the upstream sees the disconnect now.
    c = async_case
    stream = await c.open()
    await c.atake(stream, 2)
    reading = anyio.Event()
    ended: list[str] = []
    t_stop: list[int] = []

    async def reader() -> None:
        reading.set()
        async for _ in stream:
            pass
        ended.append("ended")

    async def closer() -> None:
        await reading.wait()
        await _loops.sleep(0.005)  # the reader is now inside its await of the next chunk
        t_stop.append(time.monotonic_ns())
        await c.adapter.aclose(stream)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(closer)
    record, receipt = await c.afinished(), await c.areceipt()
    check_upstream_stopped(record, t_stop[0])
    assert ended == ["ended"]
    assert (receipt.outcome, receipt.reason) == ("cancelled", "consumer_closed")


async def test_close_waits_for_a_stop_already_closing(async_case: Case, instrumented: None) -> None:
    # A stop from elsewhere (handle.cancel) closes the upstream in a task on the loop; the
    # consumer's close that follows waits for that close, and finds the receipt sealed.
    c = async_case
    stream = await c.open()
    await c.atake(stream, 2)
    handle = handle_of(stream)
    assert handle is not None
    t_stop = time.monotonic_ns()
    assert handle.cancel("manual", "from the test")
    await c.adapter.aclose(stream)
    record = await c.afinished()
    check_upstream_stopped(record, t_stop)
    receipt = await c.areceipt()
    assert (receipt.outcome, receipt.reason) == ("cancelled", "manual")
    assert (await _loops.to_thread(lambda: handle.receipt)) == receipt


def test_sdk_close_bound_before_the_patches_went_runs_after(up: Any) -> None:
    # uninstrument() leaves the stream-class patches while a stream guarded in place lives;
    # the last one takes them away. A close bound to an unguarded stream meanwhile (created
    # after uninstrument) still closes it when called after that: nothing raises.
    import openai

    client = openai.OpenAI(base_url=up.openai_base_url, api_key="test", max_retries=0)
    try:
        streamguard.instrument()
        guarded = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True
        )
        next(iter(guarded))
        streamguard.uninstrument()
        plain = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True
        )
        next(iter(plain))
        assert handle_of(plain) is None
        close = plain.close
        del guarded  # the last guarded stream: the class patches go with it
        close()
        assert plain.response.is_closed
    finally:
        streamguard.uninstrument()
        client.close()
