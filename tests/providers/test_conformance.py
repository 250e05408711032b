"""Provider conformance: every way a stream can end, for every provider, sync and async.

One list of scenarios runs over the matrix provider x {sync, async} (see ``conftest.py``). In
each stop scenario the test reads ``time.monotonic_ns()`` right before its stopping action and
then checks, where the upstream sees it, that the disconnect came within 50 ms and at most one
token was generated after the signal (DESIGN G1); that exactly one receipt was sealed (G4) with
the right reason, category and outcome (section 4); and that its counters are exactly what the
consumer did (section 3): a consumer that received 10 units and stopped while holding the 10th
has committed 10 and consumed 9. Each upstream token is one estimated token (``" w{i}"``).

Where the stop signal is not an action of the test (a stall, deadline or idle timer, an upstream
failure, a finaliser inside gc.collect()), the instant the guard stopped is read from the
receipt; a timer is checked against when it should have fired, with a generous bound, and G1
is then checked from that instant.

Known product bugs are strict xfails whose reason names the cause: when one is fixed the test
turns XPASS and fails the run until the marker is removed.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import streamguard
from streamguard import Receipt, StreamCancelled
from streamguard.testing import Fault, RequestRecord, expected_text, token_text

from . import _loops
from ._harness import (
    CUT,
    LONG,
    MS,
    STOP_BOUND_NS,
    Case,
    check_invariants,
    check_upstream_stopped,
    guard_stop_mono,
    stream_id,
    summary,
)

EXHAUST = 20  # tokens of a stream read to its end
TIMER_SLACK_NS = 250 * MS  # a timer may fire this late on a busy machine (not a G1 bound)
CUT_TEXTS = [token_text(i) for i in range(CUT)]


class Boom(Exception):
    """The application's own error, raised inside its loop over the stream."""


def check_cut(
    c: Case,
    texts: list[str],
    record: RequestRecord,
    receipt: Receipt,
    t_stop: int,
    *,
    reason: str,
    category: str = "client",
    consumed: int = CUT - 1,
) -> None:
    """A consumer received ``CUT`` units, then stopped the stream at ``t_stop``."""
    assert texts == CUT_TEXTS
    check_upstream_stopped(record, t_stop)
    assert summary(receipt) == c.expected(
        outcome="cancelled",
        reason=reason,
        category=category,
        max_tokens=LONG,
        produced=CUT,
        committed=CUT,
        consumed=consumed,
        input_tokens=record.input_tokens,
    )
    check_invariants(receipt)
    # The receipt's stop time is the test's stop signal (read just before it), not later.
    lag = guard_stop_mono(receipt, record) - t_stop
    assert -2 * MS <= lag <= STOP_BOUND_NS, f"stop_requested is {lag / MS:.1f} ms after the signal"


# ------------------------------------------------------------------------------ exhaust


async def test_exhaust_completes_with_exact_provider_usage(case: Case, instrumented: None) -> None:
    def sync(c: Case) -> None:
        texts = [c.text(chunk) for chunk in c.open(EXHAUST) if c.text(chunk)]
        check_exhaust(c, texts, c.finished(), c.receipt())

    async def async_(c: Case) -> None:
        texts = [c.text(chunk) async for chunk in await c.open(EXHAUST) if c.text(chunk)]
        check_exhaust(c, texts, await c.afinished(), await c.areceipt())

    await case.run(sync, async_)


def check_exhaust(c: Case, texts: list[str], record: RequestRecord, receipt: Receipt) -> None:
    assert "".join(texts) == expected_text(EXHAUST)
    assert (record.outcome, record.output_tokens) == ("completed", EXHAUST)
    assert summary(receipt) == c.expected(
        outcome="completed",
        reason="completed",
        category=None,
        max_tokens=EXHAUST,
        produced=EXHAUST,
        committed=EXHAUST,
        consumed=EXHAUST,
        exact_usage=True,
        input_tokens=record.input_tokens,
    )
    check_invariants(receipt)
    assert receipt.times.stop_requested is None


# ------------------------------------------------------------- the consumer stops itself


async def test_break_then_drop_closes_upstream_within_50ms(case: Case, instrumented: None) -> None:
    # ``del`` and no gc.collect(): the guard's own finaliser must close the upstream (openai's
    # Stream sits in a reference cycle and would stay open until the cyclic GC runs).
    def sync(c: Case) -> None:
        stream = c.open()
        texts = c.take(stream)
        t_stop = time.monotonic_ns()
        del stream
        check_cut(c, texts, c.finished(), c.receipt(), t_stop, reason="consumer_closed")

    async def async_(c: Case) -> None:
        stream = await c.open()
        texts = await c.atake(stream)
        t_stop = time.monotonic_ns()
        del stream
        check_cut(
            c, texts, await c.afinished(), await c.areceipt(), t_stop, reason="consumer_closed"
        )

    await case.run(sync, async_)


STALL = 0.2


async def test_break_then_keep_is_closed_by_the_stall_timer(
    case: Case, instrument_with: Callable[..., None]
) -> None:
    instrument_with(stall_timeout=STALL)

    def sync(c: Case) -> None:
        stream = c.open()
        texts = c.take(stream)
        t_due = time.monotonic_ns() + int(STALL * 1e9)
        check_stalled(c, texts, c.finished(), c.receipt(), t_due)
        assert stream is not None  # held to the end: only the stall timer can stop it

    async def async_(c: Case) -> None:
        stream = await c.open()
        texts = await c.atake(stream)
        t_due = time.monotonic_ns() + int(STALL * 1e9)
        check_stalled(c, texts, await c.afinished(), await c.areceipt(), t_due)
        assert stream is not None

    await case.run(sync, async_)


def check_stalled(
    c: Case, texts: list[str], record: RequestRecord, receipt: Receipt, t_due: int
) -> None:
    t_fired = guard_stop_mono(receipt, record)
    late = t_fired - t_due
    assert -20 * MS <= late <= TIMER_SLACK_NS, f"the stall timer fired {late / MS:.0f} ms late"
    check_cut(c, texts, record, receipt, t_fired, reason="consumer_stalled")


async def test_close_closes_upstream_within_50ms(case: Case, instrumented: None) -> None:
    def sync(c: Case) -> None:
        stream = c.open()
        texts = c.take(stream)
        t_stop = time.monotonic_ns()
        stream.close()
        # close() returns once the upstream is closed and the receipt sealed.
        assert streamguard.handle_of(stream).receipt is not None  # type: ignore[union-attr]
        check_cut(c, texts, c.finished(), c.receipt(), t_stop, reason="consumer_closed")
        stream.close()  # a second close is a no-op

    async def async_(c: Case) -> None:
        stream = await c.open()
        texts = await c.atake(stream)
        t_stop = time.monotonic_ns()
        await c.adapter.aclose(stream)
        assert streamguard.handle_of(stream).receipt is not None  # type: ignore[union-attr]
        check_cut(
            c, texts, await c.afinished(), await c.areceipt(), t_stop, reason="consumer_closed"
        )
        await c.adapter.aclose(stream)

    await case.run(sync, async_)


async def test_with_exit_closes_upstream_within_50ms(case: Case, instrumented: None) -> None:
    if not case.adapter.supports_with:
        pytest.skip(f"{case.adapter.name} streams are generators: no with statement")

    def sync(c: Case) -> None:
        t_stop = 0
        with c.open() as stream:
            texts = c.take(stream)
            t_stop = time.monotonic_ns()
        check_cut(c, texts, c.finished(), c.receipt(), t_stop, reason="consumer_closed")

    async def async_(c: Case) -> None:
        t_stop = 0
        async with await c.open() as stream:
            texts = await c.atake(stream)
            t_stop = time.monotonic_ns()
        check_cut(
            c, texts, await c.afinished(), await c.areceipt(), t_stop, reason="consumer_closed"
        )

    await case.run(sync, async_)


@pytest.mark.parametrize("held", ["inline", "local"])
async def test_exception_in_loop_closes_upstream_within_50ms(
    case: Case, instrumented: None, held: str
) -> None:
    # inline: ``for chunk in client...create(...)`` inside try/except; local: the stream is a
    # local of a function that raised, caught by its caller (the traceback keeps the frame, and
    # so the stream, alive until the except block ends).
    texts: list[str] = []
    stops: list[int] = []

    def on_chunk(c: Case, chunk: Any) -> None:
        if text := c.text(chunk):
            texts.append(text)
            if len(texts) == CUT:
                stops.append(time.monotonic_ns())
                raise Boom

    def consume_local(c: Case) -> None:
        stream = c.open()
        for chunk in stream:
            on_chunk(c, chunk)

    async def aconsume_local(c: Case) -> None:
        stream = await c.open()
        async for chunk in stream:
            on_chunk(c, chunk)

    def sync(c: Case) -> None:
        try:
            if held == "inline":
                for chunk in c.open():
                    on_chunk(c, chunk)
            else:
                consume_local(c)
        except Boom:
            pass
        check_cut(c, texts, c.finished(), c.receipt(), stops[0], reason="consumer_closed")

    async def async_(c: Case) -> None:
        try:
            if held == "inline":
                async for chunk in await c.open():
                    on_chunk(c, chunk)
            else:
                await aconsume_local(c)
        except Boom:
            pass
        record, receipt = await c.afinished(), await c.areceipt()
        check_cut(c, texts, record, receipt, stops[0], reason="consumer_closed")

    await case.run(sync, async_)


async def test_task_cancelled_inside_consumer_code_closes_upstream_within_50ms(
    async_case: Case, instrumented: None
) -> None:
    # The test holds the stream, so its finaliser cannot be the signal: the end of the task
    # that iterates it is (an asyncio task cancelled; a trio task in a cancelled nursery).
    c = async_case
    stream = await c.open()
    texts: list[str] = []
    tenth = anyio.Event()

    async def consumer() -> None:
        async for chunk in stream:
            if text := c.text(chunk):
                texts.append(text)
                if len(texts) == CUT:
                    tenth.set()
                    await _loops.sleep(3600)  # the consumer's own slow work

    t_stop = await _loops.cancel_when(consumer, tenth)
    record, receipt = await c.afinished(), await c.areceipt()
    check_cut(c, texts, record, receipt, t_stop, reason="consumer_cancelled")
    assert stream is not None


async def test_task_failing_inside_the_loop_closes_upstream_within_50ms(
    async_case: Case, instrumented: None
) -> None:
    # The exception ends the task; the task (on trio: the nursery's exception group) keeps the
    # exception, its traceback the frame and the frame the stream: the end of the task is the
    # only signal there is. trio does not say how a task ended, only that its nursery is
    # cancelled (as trio does when a child raises): there the reason is consumer_cancelled.
    c = async_case
    texts: list[str] = []
    stops: list[int] = []

    async def consumer() -> None:
        stream = await c.open()
        async for chunk in stream:
            if text := c.text(chunk):
                texts.append(text)
                if len(texts) == CUT:
                    stops.append(time.monotonic_ns())
                    raise Boom

    holder = await _loops.run_failing(consumer, Boom)
    record, receipt = await c.settled()
    reason = "consumer_cancelled" if _loops.is_trio() else "consumer_closed"
    check_cut(c, texts, record, receipt, stops[0], reason=reason)
    assert holder is not None  # still held: the stream was not simply dropped


async def test_garbage_collected_stream_in_a_cycle_closes_upstream_within_50ms(
    case: Case, instrumented: None
) -> None:
    def sync(c: Case) -> None:
        stream = c.open()
        texts = c.take(stream)
        cycle: list[Any] = [stream]
        cycle.append(cycle)
        del stream, cycle
        t_collect = time.monotonic_ns()
        gc.collect()
        check_collected(c, texts, c.finished(), c.receipt(), t_collect, time.monotonic_ns())

    async def async_(c: Case) -> None:
        stream = await c.open()
        texts = await c.atake(stream)
        cycle: list[Any] = [stream]
        cycle.append(cycle)
        del stream, cycle
        t_collect = time.monotonic_ns()
        gc.collect()
        t_collected = time.monotonic_ns()
        record, receipt = await c.afinished(), await c.areceipt()
        check_collected(c, texts, record, receipt, t_collect, t_collected)

    await case.run(sync, async_)


def check_collected(
    c: Case, texts: list[str], record: RequestRecord, receipt: Receipt, t0: int, t1: int
) -> None:
    # A full collection takes tens of milliseconds in a process with the SDKs loaded: the stop
    # signal is the finaliser, somewhere inside gc.collect(); G1 runs from there.
    t_finalized = guard_stop_mono(receipt, record)
    assert t0 - 2 * MS <= t_finalized <= t1 + 2 * MS, "the stream was not stopped by gc.collect()"
    check_cut(c, texts, record, receipt, t_finalized, reason="consumer_closed")


# ------------------------------------------------------------------- the guard stops it

DEADLINE = 0.3


async def test_deadline_cancels_the_stream_and_closes_upstream(
    case: Case, instrument_with: Callable[..., None]
) -> None:
    instrument_with(deadline=DEADLINE)
    texts: list[str] = []

    def sync(c: Case) -> None:
        t_open = time.monotonic_ns()
        with pytest.raises(StreamCancelled) as info:
            for chunk in c.open():
                if text := c.text(chunk):
                    texts.append(text)
        check_deadline(c, info.value, c.finished(), c.receipt(), t_open)

    async def async_(c: Case) -> None:
        t_open = time.monotonic_ns()
        with pytest.raises(StreamCancelled) as info:
            async for chunk in await c.open():
                if text := c.text(chunk):
                    texts.append(text)
        check_deadline(c, info.value, await c.afinished(), await c.areceipt(), t_open)

    def check_deadline(
        c: Case, exc: StreamCancelled, record: RequestRecord, receipt: Receipt, t_open: int
    ) -> None:
        assert (exc.reason, exc.stream_id) == ("deadline_exceeded", receipt.stream_id)
        t_fired = guard_stop_mono(receipt, record)
        late = t_fired - (t_open + int(DEADLINE * 1e9))
        assert 0 <= late <= TIMER_SLACK_NS, f"the deadline fired {late / MS:.0f} ms late"
        check_upstream_stopped(record, t_fired)
        k = len(texts)
        assert texts == [token_text(i) for i in range(k)]
        tokens = receipt.tokens
        # The timer fires while the consumer waits for a chunk (consumed all it got) or, for a
        # sync stream, while it holds one; a chunk already on its way is counted post_cutoff.
        assert tokens.consumed in (k - 1, k), tokens
        assert tokens.post_cutoff in (0, 1), tokens
        assert summary(receipt) == c.expected(
            outcome="cancelled",
            reason="deadline_exceeded",
            category="policy",
            max_tokens=LONG,
            produced=k,
            committed=k,
            consumed=tokens.consumed,
            post_cutoff=tokens.post_cutoff,
            input_tokens=record.input_tokens,
        )
        check_invariants(receipt)

    await case.run(sync, async_)


async def test_shutdown_with_a_stream_open_closes_upstream_within_50ms(
    case: Case, instrumented: None, request: pytest.FixtureRequest
) -> None:
    def sync(c: Case) -> None:
        stream = c.open()
        texts = c.take(stream)
        t_stop = time.monotonic_ns()
        streamguard.uninstrument()
        check_cut(
            c, texts, c.finished(), c.receipt(), t_stop, reason="shutdown", category="operator"
        )
        with pytest.raises(StreamCancelled) as info:
            next(stream)
        assert info.value.reason == "shutdown"

    async def async_(c: Case) -> None:
        stream = await c.open()
        texts = await c.atake(stream)
        t_stop = time.monotonic_ns()
        streamguard.uninstrument()
        record, receipt = await c.afinished(), await c.areceipt()
        check_cut(c, texts, record, receipt, t_stop, reason="shutdown", category="operator")
        with pytest.raises(StreamCancelled) as info:
            await anext(stream)
        assert info.value.reason == "shutdown"

    await case.run(sync, async_)


# -------------------------------------------------------------------- the upstream fails


def read_all(c: Case, max_tokens: int) -> tuple[list[str], Exception | None]:
    texts: list[str] = []
    try:
        for chunk in c.open(max_tokens):
            if text := c.text(chunk):
                texts.append(text)
    except Exception as exc:
        return texts, exc
    return texts, None


async def aread_all(c: Case, max_tokens: int) -> tuple[list[str], Exception | None]:
    texts: list[str] = []
    try:
        async for chunk in await c.open(max_tokens):
            if text := c.text(chunk):
                texts.append(text)
    except Exception as exc:
        return texts, exc
    return texts, None


async def sdk_error_without_guard(c: Case, fault: Fault) -> Exception:
    """What the SDK raises for ``fault`` with StreamGuard off: the guard must not change it."""
    c.up.add_fault(fault)
    _, baseline = await aread_all(c, 8) if c.is_async else await _loops.to_thread(read_all, c, 8)
    assert baseline is not None, f"{fault} raised nothing without the guard"
    gc.collect()  # an unguarded openai stream stays open until the cyclic GC
    c.up.reset()
    return baseline


async def guarded_failure(
    c: Case, fault: Fault, instrument: Callable[..., None]
) -> tuple[list[str], Exception, RequestRecord, Receipt]:
    baseline = await sdk_error_without_guard(c, fault)
    instrument()
    c.up.add_fault(fault)
    if c.is_async:
        texts, exc = await aread_all(c, LONG)
        record, receipt = await c.afinished(), await c.areceipt()
    else:
        texts, exc = await _loops.to_thread(read_all, c, LONG)
        record, receipt = await _loops.to_thread(c.finished), await _loops.to_thread(c.receipt)
    assert exc is not None
    assert (type(exc), str(exc)) == (type(baseline), str(baseline)), "the SDK error changed"
    return texts, exc, record, receipt


def check_failed(c: Case, texts: list[str], receipt: Receipt, input_tokens: int | None) -> None:
    k = len(texts)
    assert texts == [token_text(i) for i in range(k)]
    found, expected = (
        summary(receipt),
        c.expected(
            outcome="failed",
            reason="upstream_error",
            category="upstream",
            max_tokens=LONG,
            produced=k,
            committed=k,
            consumed=k,  # the consumer asked for the next unit and got the error
            input_tokens=input_tokens,
        ),
    )
    # Checked on its own: test_upstream_failure_prevents_nothing.
    del found["prevented_estimate"], expected["prevented_estimate"]
    assert found == expected
    check_invariants(receipt)


async def test_upstream_reset_raises_the_sdk_error_unchanged_and_fails_the_receipt(
    case: Case, instrument_with: Callable[..., None]
) -> None:
    texts, _, record, receipt = await guarded_failure(
        case, Fault("reset", after_tokens=5), instrument_with
    )
    assert record.outcome == "reset"
    assert len(texts) <= 5
    check_failed(case, texts, receipt, record.input_tokens)


async def test_malformed_chunk_raises_the_sdk_error_unchanged_and_closes_upstream(
    case: Case, instrument_with: Callable[..., None]
) -> None:
    # The upstream goes on generating after the bad frame: the guard must close it.
    texts, _, record, receipt = await guarded_failure(
        case, Fault("malformed", after_tokens=5), instrument_with
    )
    assert texts == [token_text(i) for i in range(5)]
    check_upstream_stopped(record, guard_stop_mono(receipt, record))
    check_failed(case, texts, receipt, record.input_tokens)


@pytest.mark.parametrize("status", [500, 429])
async def test_http_error_at_start_raises_the_sdk_error_unchanged_with_one_failed_receipt(
    case: Case, instrument_with: Callable[..., None], status: int
) -> None:
    texts, _, record, receipt = await guarded_failure(
        case, Fault("http_error", status=status), instrument_with
    )
    assert (texts, record.status, record.tokens_generated) == ([], status, 0)
    check_failed(case, texts, receipt, None)


async def test_upstream_failure_prevents_nothing(
    case: Case, instrument_with: Callable[..., None]
) -> None:
    # DESIGN section 3: prevented_estimate is what the upstream would still have generated had
    # the stream not been cut. An upstream that failed would not have generated anything more;
    # counting it would show HTTP 500s and resets as savings on the dashboards.
    instrument_with()
    case.up.add_fault(Fault("http_error", status=500))
    _, exc = await (
        aread_all(case, LONG) if case.is_async else _loops.to_thread(read_all, case, LONG)
    )
    assert exc is not None
    _, receipt = await case.settled()
    assert (receipt.outcome, receipt.tokens.prevented_estimate) == ("failed", 0)


# ------------------------------------------------------- more stop signals of DESIGN section 4


async def test_manual_cancel_by_stream_id_closes_upstream_within_50ms(
    case: Case, instrumented: None
) -> None:
    def sync(c: Case) -> None:
        stream = c.open()
        texts = c.take(stream)
        t_stop = time.monotonic_ns()
        assert streamguard.cancel_stream(stream_id(stream)) is True
        assert streamguard.cancel_stream(stream_id(stream)) is False  # the first stop wins
        check_cut(c, texts, c.finished(), c.receipt(), t_stop, reason="manual", category="operator")
        with pytest.raises(StreamCancelled) as info:
            next(stream)
        assert info.value.reason == "manual"

    async def async_(c: Case) -> None:
        stream = await c.open()
        texts = await c.atake(stream)
        t_stop = time.monotonic_ns()
        assert streamguard.cancel_stream(stream_id(stream)) is True
        record, receipt = await c.settled()
        check_cut(c, texts, record, receipt, t_stop, reason="manual", category="operator")
        with pytest.raises(StreamCancelled) as info:
            await anext(stream)
        assert info.value.reason == "manual"

    await case.run(sync, async_)


STALLED_UPSTREAM = Fault("stall", after_tokens=CUT, seconds=1.0)  # open, silent, then reset


async def test_cancelled_read_closes_upstream_within_50ms(
    async_case: Case, instrumented: None
) -> None:
    # The loop's timeout (asyncio.timeout, trio.fail_after) cancels the consumer while it
    # waits for the next chunk: CancelledError (trio: Cancelled) at the read boundary.
    c = async_case
    c.up.add_fault(STALLED_UPSTREAM)
    texts: list[str] = []
    stream = await c.open()
    with pytest.raises(TimeoutError):
        async with _loops.fail_after(0.3):
            async for chunk in stream:
                if text := c.text(chunk):
                    texts.append(text)
    record, receipt = await c.settled()
    t_cancelled = guard_stop_mono(receipt, record)
    check_cut(c, texts, record, receipt, t_cancelled, reason="consumer_cancelled", consumed=CUT)


IDLE = 0.2


async def test_upstream_idle_cancels_the_stream_and_closes_upstream(
    case: Case, instrument_with: Callable[..., None]
) -> None:
    instrument_with(idle_timeout=IDLE)
    case.up.add_fault(STALLED_UPSTREAM)
    texts: list[str] = []
    last: list[int] = []

    def on_chunk(c: Case, chunk: Any) -> None:
        if text := c.text(chunk):
            texts.append(text)
            last[:] = [time.monotonic_ns()]

    def sync(c: Case) -> StreamCancelled:
        with pytest.raises(StreamCancelled) as info:
            for chunk in c.open():
                on_chunk(c, chunk)
        return info.value

    async def async_(c: Case) -> StreamCancelled:
        with pytest.raises(StreamCancelled) as info:
            async for chunk in await c.open():
                on_chunk(c, chunk)
        return info.value

    exc = await case.run(sync, async_)
    record, receipt = await case.settled()
    assert exc.reason == "upstream_idle"
    t_fired = guard_stop_mono(receipt, record)
    late = t_fired - (last[0] + int(IDLE * 1e9))
    assert -20 * MS <= late <= TIMER_SLACK_NS, f"the idle timer fired {late / MS:.0f} ms late"
    check_cut(
        case,
        texts,
        record,
        receipt,
        t_fired,
        reason="upstream_idle",
        category="upstream",
        consumed=CUT,
    )


async def test_cancel_from_another_thread_while_the_consumer_waits_closes_upstream_within_50ms(
    case: Case, instrumented: None
) -> None:
    # The consumer waits for a chunk that does not come (a model "thinking"); an operator
    # cancels the stream by id from another thread.
    case.up.add_fault(STALLED_UPSTREAM)
    texts: list[str] = []
    stops: list[int] = []

    def cancel_later(stream_id: str) -> None:
        time.sleep(0.1)
        stops.append(time.monotonic_ns())
        streamguard.cancel_stream(stream_id)

    def on_chunk(c: Case, chunk: Any, stream: Any) -> None:
        if (text := c.text(chunk)) and len(texts) < CUT:
            texts.append(text)
            if len(texts) == CUT:
                threading.Thread(target=cancel_later, args=(stream_id(stream),)).start()

    def sync(c: Case) -> StreamCancelled:
        stream = c.open()
        with pytest.raises(StreamCancelled) as info:
            for chunk in stream:
                on_chunk(c, chunk, stream)
        return info.value

    async def async_(c: Case) -> StreamCancelled:
        stream = await c.open()
        with pytest.raises(StreamCancelled) as info:
            async for chunk in stream:
                on_chunk(c, chunk, stream)
        return info.value

    exc = await case.run(sync, async_)
    assert exc.reason == "manual"
    record, receipt = await case.settled()
    check_cut(
        case,
        texts,
        record,
        receipt,
        stops[0],
        reason="manual",
        category="operator",
        consumed=CUT,
    )
