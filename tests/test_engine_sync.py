"""The sync driver over plain generators: every way a stream can end gives one right receipt."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

import streamguard
from streamguard import GuardedIterator, StreamCancelled
from streamguard.testing.sinks import InMemoryReceiptSink


class Upstream:
    """A generator-backed upstream that records how (and how often) it was closed."""

    def __init__(self, n: int = 100, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.n, self.delay, self.fail_at = n, delay, fail_at
        self.closes = 0
        self.closed_at: float | None = None
        self.generated = 0

    def tokens(self) -> Iterator[str]:
        for i in range(self.n):
            if self.fail_at is not None and i == self.fail_at:
                raise ConnectionError("upstream reset")
            if self.delay:
                time.sleep(self.delay)
            self.generated += 1
            yield f" w{i}"

    def close(self) -> None:
        self.closes += 1
        self.closed_at = time.monotonic()

    def guard(self, **kw: object) -> GuardedIterator[str]:
        return GuardedIterator(self.tokens(), close=self.close, provider="custom", model="m", **kw)  # type: ignore[arg-type]


def only_receipt(sink: InMemoryReceiptSink, timeout: float = 2.0):
    receipts = sink.wait_for(1, timeout)
    time.sleep(0.02)
    assert len(sink.receipts) == 1, sink.receipts
    return receipts[0]


def test_exhausted_stream_gives_completed_receipt(runtime, sink) -> None:
    up = Upstream(n=10)
    assert list(up.guard()) == [f" w{i}" for i in range(10)]
    r = only_receipt(sink)
    assert (r.outcome, r.reason, r.category) == ("completed", "completed", None)
    t = r.tokens
    assert (t.produced, t.committed, t.consumed, t.undelivered, t.post_cutoff) == (10, 10, 10, 0, 0)
    assert t.usage_source == "estimated"
    assert t.prevented_estimate == 0
    assert up.closes == 1


def test_break_then_drop_closes_upstream_at_once(runtime, sink) -> None:
    up = Upstream(n=100)
    for i, _ in enumerate(up.guard()):
        if i == 4:
            break
    r = only_receipt(sink)
    assert (r.outcome, r.reason, r.category) == ("cancelled", "consumer_closed", "client")
    assert up.closes == 1
    assert (r.tokens.produced, r.tokens.committed, r.tokens.consumed) == (5, 5, 4)
    assert r.tokens.undelivered == 1
    assert r.tokens.prevented_estimate > 0


def test_close_is_idempotent_and_iteration_then_ends(runtime, sink) -> None:
    up = Upstream()
    g = up.guard()
    next(g)
    g.close()
    g.close()
    with pytest.raises(StopIteration):
        next(g)
    assert up.closes == 1
    assert only_receipt(sink).reason == "consumer_closed"


def test_with_exit_closes(runtime, sink) -> None:
    up = Upstream()
    with up.guard() as g:
        next(g)
    assert up.closes == 1
    assert only_receipt(sink).reason == "consumer_closed"


def test_exception_in_loop_closes_when_the_traceback_is_gone(runtime, sink) -> None:
    up = Upstream()

    def consume() -> None:
        stream = up.guard()
        for _ in stream:
            raise KeyError("app bug")

    with pytest.raises(KeyError):
        consume()
    r = only_receipt(sink)
    assert r.reason == "consumer_closed"
    assert up.closes == 1


def test_upstream_error_is_raised_unchanged_and_receipt_failed(runtime, sink) -> None:
    up = Upstream(fail_at=3)
    got = []
    with pytest.raises(ConnectionError, match="upstream reset"):
        for tok in up.guard():
            got.append(tok)
    assert len(got) == 3
    r = only_receipt(sink)
    assert (r.outcome, r.reason, r.category) == ("failed", "upstream_error", "upstream")
    assert "ConnectionError" in (r.detail or "")


def test_stalled_consumer_is_stopped_within_stall_timeout(runtime, sink) -> None:
    up = Upstream()
    g = up.guard(stall_timeout=0.1)
    next(g)
    t0 = time.monotonic()
    r = sink.wait_for(1, 2.0)[0]
    assert r.reason == "consumer_stalled"
    assert up.closed_at is not None and up.closed_at - t0 < 0.1 + 0.15
    with pytest.raises(StreamCancelled) as info:
        next(g)
    assert info.value.reason == "consumer_stalled"
    with pytest.raises(StopIteration):
        next(g)


def test_deadline_stops_a_slow_stream(runtime, sink) -> None:
    up = Upstream(n=1000, delay=0.005)
    with pytest.raises(StreamCancelled) as info:
        for _ in up.guard(deadline=0.1):
            pass
    assert info.value.reason == "deadline_exceeded"
    r = only_receipt(sink)
    assert (r.reason, r.category) == ("deadline_exceeded", "policy")
    assert r.tokens.produced < 1000


def test_idle_upstream_is_stopped(runtime, sink) -> None:
    up = Upstream(n=3, delay=0.5)
    with pytest.raises(StreamCancelled) as info:
        for _ in up.guard(idle_timeout=0.1):
            pass
    assert info.value.reason == "upstream_idle"
    assert only_receipt(sink).category == "upstream"


def test_cancel_by_stream_id_from_another_thread(runtime, sink) -> None:
    up = Upstream(n=1000, delay=0.002)
    g = up.guard()
    next(g)
    assert [h.stream_id for h in streamguard.active_streams()] == [g.stream_id]
    threading.Thread(target=streamguard.cancel_stream, args=(g.stream_id, "manual")).start()
    with pytest.raises(StreamCancelled) as info:
        for _ in g:
            pass
    assert info.value.reason == "manual"
    r = only_receipt(sink)
    assert (r.reason, r.category) == ("manual", "operator")
    assert streamguard.active_streams() == []
    assert streamguard.cancel_stream(g.stream_id) is False


def test_first_stop_wins(runtime, sink) -> None:
    up = Upstream()
    g = up.guard()
    next(g)
    assert g.cancel("manual") is True
    assert g.cancel("shutdown") is False
    g.close()
    assert only_receipt(sink).reason == "manual"
    assert up.closes == 1


def test_garbage_collection_of_abandoned_cycle_closes(runtime, sink) -> None:
    up = Upstream()
    g = up.guard()
    next(g)
    holder: dict[str, object] = {}
    holder["self"] = holder
    holder["g"] = g
    del g, holder
    gc.collect()
    assert only_receipt(sink).reason == "consumer_closed"
    assert up.closes == 1


def test_unknown_reason_is_a_clear_error(runtime) -> None:
    g = Upstream().guard()
    with pytest.raises(ValueError, match="Unknown stop reason"):
        g.cancel("because")
    g.close()


def test_runtime_shutdown_stops_open_streams(runtime, sink) -> None:
    up = Upstream()
    g = up.guard()
    next(g)
    runtime.shutdown()
    r = only_receipt(sink)
    assert (r.reason, r.category) == ("shutdown", "operator")
    assert up.closes == 1
