"""A hypothesis state machine drives the engine through random interleavings.

Any order of reads (units, non-units, errors, the end), consumer steps, stops of every reason
from other threads, timer firings, close and garbage collection gives exactly one receipt,
one upstream close, and keeps every counter invariant at every step.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections import deque
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamguard import GuardedIterator, StopReason, StreamCancelled
from streamguard._config import Options
from streamguard._engine.core import NOT_A_UNIT
from streamguard._engine.watchdog import Timers, evaluate
from streamguard._receipts.signing import HmacSigner
from streamguard._runtime import Runtime
from streamguard.testing.sinks import InMemoryReceiptSink

UNIT, OTHER, ERROR, END, LATE = "unit", "other", "error", "end", "late"
STOPS = [r for r in StopReason if r is not StopReason.COMPLETED]


class Source:
    """An upstream whose next read is scripted by the state machine."""

    def __init__(self) -> None:
        self.script: deque[tuple[str, int]] = deque()
        self.closes = 0
        self.on_late: Any = None

    def __iter__(self) -> Source:
        return self

    def __next__(self) -> tuple[str, int]:
        kind, n = self.script.popleft()
        if kind == ERROR:
            raise ConnectionResetError("reset by peer")
        if kind == END:
            raise StopIteration
        if kind == LATE:  # a stop lands while this read is in flight
            self.on_late()
            return UNIT, n
        return kind, n

    def close(self) -> None:
        self.closes += 1


def meter(chunk: tuple[str, int]) -> int:
    kind, n = chunk
    return n if kind == UNIT else NOT_A_UNIT


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sink = InMemoryReceiptSink()
        self.runtime = Runtime(
            Options.resolve({"stall_timeout": None}, environ={}),
            signer=HmacSigner(b"k" * 32, key_id="t"),
            sinks=[self.sink],
        )
        self.source = Source()
        self.guard: Any = GuardedIterator(
            self.source,
            close=self.source.close,
            meter=meter,
            runtime=self.runtime,
            stall_timeout=None,
        )
        self.core = self.guard._core
        self.source.on_late = lambda: self.core.request_stop(StopReason.MANUAL, "during a read")
        self.handed: list[Any] = []
        self.frozen: tuple[int, ...] | None = None
        self.finished = False  # the iteration ended or raised its stop error

    def counters(self) -> tuple[int, ...]:
        c = self.core
        return (
            c.produced,
            c.committed,
            c.consumed,
            c.produced_tokens,
            c.committed_tokens,
            c.consumed_tokens,
        )

    def _read(self) -> None:
        with contextlib.suppress(StopIteration, StreamCancelled, ConnectionResetError):
            self.handed.append(next(self.guard))

    @precondition(lambda self: self.guard is not None)
    @rule(
        kind=st.sampled_from([UNIT, UNIT, UNIT, OTHER, ERROR, END, LATE]), tokens=st.integers(0, 9)
    )
    def read(self, kind: str, tokens: int) -> None:
        self.source.script.append((kind, tokens))
        self._read()
        self.source.script.clear()

    @rule(reason=st.sampled_from(STOPS))
    def stop_from_another_thread(self, reason: StopReason) -> None:
        t = threading.Thread(target=self.core.request_stop, args=(reason, "test"))
        t.start()
        t.join()

    @rule(which=st.sampled_from(["stall", "deadline", "idle"]), reading=st.booleans())
    def timer_fires(self, which: str, reading: bool) -> None:
        ns = 1
        self.core.watch = Timers(
            ns if which == "stall" else None,
            ns if which == "deadline" else None,
            ns if which == "idle" else None,
        )
        self.core.in_read = reading
        reason, _ = evaluate(self.core, time.monotonic_ns() + 10**9)
        self.core.in_read = False
        if reason is not None:
            self.core.request_stop(reason, "timer")

    @precondition(lambda self: self.guard is not None)
    @rule()
    def close(self) -> None:
        self.guard.close()

    @precondition(lambda self: self.guard is not None)
    @rule()
    def drop(self) -> None:
        self.guard = None
        gc.collect()

    @invariant()
    def accounting(self) -> None:
        c = self.core
        assert c.produced >= c.committed >= c.consumed >= 0
        assert len([h for h in self.handed if h[0] == UNIT]) == c.committed  # nothing late handed
        assert c.post_cutoff <= 1
        assert c.produced_tokens >= c.committed_tokens >= c.consumed_tokens >= 0
        if c.stop_reason is None:
            assert self.frozen is None
            assert self.source.closes == 0
            assert not self.sink.receipts
        else:
            if self.frozen is None:
                self.frozen = self.counters()
            assert self.counters() == self.frozen, "counters moved after the cutoff"
            assert self.source.closes == 1
            assert len(self.sink.receipts) == 1
            r = self.sink.receipts[0]
            assert r.reason == str(c.stop_reason)
            t = r.tokens
            assert t.produced >= t.committed >= t.consumed
            assert t.undelivered == t.produced - t.consumed

    def teardown(self) -> None:
        self.guard = None
        gc.collect()
        assert self.source.closes == 1
        assert len(self.sink.receipts) == 1
        self.runtime.shutdown()
        assert len(self.sink.receipts) == 1
        assert not [t for t in threading.enumerate() if t.name == "streamguard-watchdog"]


EngineMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
# Generous: hundreds of random runs, each with threads; slow only on a loaded machine.
test_engine_state_machine = pytest.mark.timeout(300)(EngineMachine.TestCase)
