"""The conformance harness: a ``Case`` (one provider in one mode against the shared upstream)
and the checks every stop scenario makes.

G1 is checked where the upstream sees it: ``RequestRecord.disconnected_ns`` and
``tokens_after`` are the upstream's own monotonic readings, compared with the test's reading
of the stop signal. Receipts are compared as whole summaries (DESIGN section 3 counters).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from streamguard import Receipt, handle_of
from streamguard.testing import InMemoryReceiptSink, RequestRecord, Upstream

from . import _loops
from ._adapters import Adapter

__all__ = [
    "CUT",
    "EXPECTED_OUTPUT",
    "INTERVAL",
    "LONG",
    "MS",
    "STOP_BOUND_NS",
    "Case",
    "check_invariants",
    "check_upstream_stopped",
    "guard_stop_mono",
    "summary",
]

T = TypeVar("T")
INTERVAL = 0.02  # seconds per token at the upstream: 20 ms
MS = 1_000_000  # nanoseconds
STOP_BOUND_NS = 50 * MS  # DESIGN G1: stop signal to upstream disconnect, in any test
CUT = 10  # units a consumer takes before it stops
LONG = 60  # tokens of a stream that must be cut (1.2 s): it cannot end on its own in time
EXPECTED_OUTPUT = 512  # instrument(expected_output_tokens=...): answer length before any history
WAIT = 3.0  # seconds to wait for something that should take milliseconds


class Case:
    """One provider, sync or async, with a client on the shared upstream and the test's sink."""

    def __init__(
        self, adapter: Adapter, is_async: bool, up: Upstream, sink: InMemoryReceiptSink
    ) -> None:
        self.adapter = adapter
        self.is_async = is_async
        self.up = up
        self.sink = sink
        self.client: Any = adapter.client(up, is_async)
        self._closed = False

    async def aclose(self) -> None:
        """Close the client (once), on the loop the test runs on."""
        if not self._closed:
            self._closed = True
            await self.adapter.close_client(self.client, self.is_async)

    aclose_for_test = aclose  # _loops.run closes the cases a test was given

    def __repr__(self) -> str:
        return f"<Case {self.adapter.name}-{'async' if self.is_async else 'sync'}>"

    async def run(
        self,
        sync_body: Callable[[Case], T],
        async_body: Callable[[Case], Awaitable[T]],
    ) -> T:
        """Run the scenario in this case's mode and return what it returns. A sync scenario
        runs in a worker thread with no event loop, as in a threaded web server."""
        if self.is_async:
            return await async_body(self)
        return await _loops.to_thread(sync_body, self)

    # ---------------------------------------------------------------- opening and reading
    def open(self, max_tokens: int = LONG) -> Any:
        """A new stream (an awaitable of one in async mode)."""
        return self.adapter.open(self.client, max_tokens)

    def text(self, chunk: Any) -> str:
        return self.adapter.text(chunk) or ""

    def take(self, stream: Any, n: int = CUT) -> list[str]:
        """Read until ``n`` units arrived; returns their texts. The stream stays open."""
        texts: list[str] = []
        for chunk in stream:
            if text := self.text(chunk):
                texts.append(text)
                if len(texts) == n:
                    break
        return texts

    async def atake(self, stream: Any, n: int = CUT) -> list[str]:
        texts: list[str] = []
        async for chunk in stream:
            if text := self.text(chunk):
                texts.append(text)
                if len(texts) == n:
                    break
        return texts

    # ------------------------------------------------------------------------ waiting
    def record(self) -> RequestRecord:
        """The one request this test sent (ollama sends it on the first read)."""
        (record,) = self.up.wait_for_requests(1, timeout=WAIT)
        return record

    def finished(self, seconds: float = WAIT) -> RequestRecord:
        """The request, once it ended (or after ``seconds``)."""
        record = self.record()
        record.wait_done(seconds)
        return record

    async def afinished(self, seconds: float = WAIT) -> RequestRecord:
        """``finished``, waiting in a worker thread: this event loop keeps running (an async
        close runs on it)."""
        return await _loops.to_thread(self.finished, seconds)

    async def settled(self) -> tuple[RequestRecord, Receipt]:
        """The request and the one receipt, in either mode (polls; keeps the loop running)."""
        return await self.afinished(), await self.areceipt()

    def receipt(self) -> Receipt:
        """The one receipt of this test, checked again a little later: never two."""
        self.sink.wait_for(1, timeout=WAIT)
        time.sleep(0.02)
        receipts = self.sink.receipts
        assert len(receipts) == 1, f"expected exactly one receipt, got {receipts}"
        return receipts[0]

    async def areceipt(self) -> Receipt:
        await self.sink.wait_for_async(1, timeout=WAIT)
        await _loops.sleep(0.02)
        receipts = self.sink.receipts
        assert len(receipts) == 1, f"expected exactly one receipt, got {receipts}"
        return receipts[0]

    # ---------------------------------------------------------------------- expecting
    def expected(
        self,
        *,
        outcome: str,
        reason: str,
        category: str | None,
        max_tokens: int,
        produced: int,
        committed: int,
        consumed: int,
        post_cutoff: int = 0,
        exact_usage: bool = False,
        input_tokens: int | None = None,
        operation: str | None = None,
    ) -> dict[str, Any]:
        """A receipt summary (DESIGN sections 3 and 5).

        A stream cut before its end knows its input tokens only where the provider reports
        them at the start (``Adapter.input_known_when_cut``). ``prevented_estimate`` is what
        the upstream would still have generated: ``min(max_tokens, expected_length) -
        produced``, with no completed stream yet to average (``EXPECTED_OUTPUT``); nothing
        for a stream that completed or that the upstream itself ended, nor where the
        generation goes on without the connection (``Adapter.prevents``).
        """
        adapter = self.adapter
        if outcome != "completed" and not adapter.input_known_when_cut:
            input_tokens = None
        limit = max_tokens if adapter.sends_max_tokens else None
        prevented = max(0, min(limit or EXPECTED_OUTPUT, EXPECTED_OUTPUT) - produced)
        if not adapter.prevents:
            prevented = 0  # a server-side run goes on without the connection
        return {
            "provider": adapter.receipt_provider,
            "model": adapter.receipt_model,
            "operation": operation or adapter.operation,
            "request_max_tokens": limit,
            "outcome": outcome,
            "reason": reason,
            "category": category,
            "input": input_tokens,
            "produced": produced,
            "committed": committed,
            "consumed": consumed,
            "undelivered": produced - consumed,
            "post_cutoff": post_cutoff,
            "prevented_estimate": prevented if outcome == "cancelled" else 0,
            "usage_source": "provider" if exact_usage else "estimated",
        }


def summary(receipt: Receipt) -> dict[str, Any]:
    tokens = receipt.tokens
    return {
        "provider": receipt.provider,
        "model": receipt.model,
        "operation": receipt.operation,
        "request_max_tokens": receipt.request_max_tokens,
        "outcome": receipt.outcome,
        "reason": receipt.reason,
        "category": receipt.category,
        "input": tokens.input,
        "produced": tokens.produced,
        "committed": tokens.committed,
        "consumed": tokens.consumed,
        "undelivered": tokens.undelivered,
        "post_cutoff": tokens.post_cutoff,
        "prevented_estimate": tokens.prevented_estimate,
        "usage_source": tokens.usage_source,
    }


def check_invariants(receipt: Receipt) -> None:
    """G3 on the sealed counters, and times in the order they happened."""
    t = receipt.tokens
    assert t.produced >= t.committed >= t.consumed >= 0, t
    assert t.undelivered == t.produced - t.consumed, t
    times = receipt.times
    assert times.started <= times.finalized, times
    if times.upstream_closed is not None:
        assert times.upstream_closed <= times.finalized, times
        if times.stop_requested is not None:
            assert times.stop_requested <= times.upstream_closed, times


def guard_stop_mono(receipt: Receipt, record: RequestRecord) -> int:
    """The instant the guard stopped the stream (its receipt's ``stop_requested``, a Unix
    time) on the upstream's monotonic clock: the stop signal of timers and upstream errors."""
    assert receipt.times.stop_requested is not None, receipt.times
    return record.started_ns + (receipt.times.stop_requested - record.started_wall_ns)


def check_upstream_stopped(record: RequestRecord, t_stop: int) -> None:
    """G1: the upstream saw the disconnect within 50 ms of the stop signal at ``t_stop``
    (``time.monotonic_ns()``) and generated at most one token interval after it."""
    generated_after = record.tokens_after(t_stop)
    assert record.outcome == "disconnected", (
        f"the upstream was not disconnected: outcome {record.outcome!r}, "
        f"{generated_after} tokens generated after the stop signal"
    )
    assert record.disconnected_ns is not None
    lag_ms = (record.disconnected_ns - t_stop) / MS
    assert lag_ms <= STOP_BOUND_NS / MS, f"the upstream saw the disconnect {lag_ms:.1f} ms late"
    assert generated_after <= 1, f"{generated_after} tokens generated after the stop signal"


def check_consumer_closed(
    c: Case,
    record: RequestRecord,
    receipt: Receipt,
    t_stop: int,
    *,
    committed: int = CUT,
    consumed: int = CUT - 1,
) -> None:
    """The consumer closed or dropped a ``LONG`` stream at ``t_stop`` after ``committed`` units
    were handed over: the upstream stopped at once and the receipt says ``consumer_closed``."""
    check_upstream_stopped(record, t_stop)
    assert summary(receipt) == c.expected(
        outcome="cancelled",
        reason="consumer_closed",
        category="client",
        max_tokens=LONG,
        produced=committed,
        committed=committed,
        consumed=consumed,
        input_tokens=record.input_tokens,
    )


def stream_id(stream: Any) -> str:
    handle = handle_of(stream)
    assert handle is not None, f"{type(stream).__name__} is not guarded"
    return handle.stream_id
