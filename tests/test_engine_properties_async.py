"""The engine state machine again, driven from asyncio: reads, cancellation at the read
boundary, the end of the iterating task, stops from the loop and from other threads, aclose
and garbage collection. One receipt, one upstream close, every invariant, no task left."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections import deque
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamguard import GuardedAsyncIterator, StopReason, StreamCancelled
from streamguard._config import Options
from streamguard._engine.core import NOT_A_UNIT
from streamguard._receipts.signing import HmacSigner
from streamguard._runtime import Runtime
from streamguard.testing.sinks import InMemoryReceiptSink

UNIT, OTHER, ERROR, END, HANG = "unit", "other", "error", "end", "hang"
STOPS = [r for r in StopReason if r is not StopReason.COMPLETED]


class Source:
    def __init__(self) -> None:
        self.script: deque[tuple[str, int]] = deque()
        self.closes = 0

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> tuple[str, int]:
        kind, n = self.script.popleft() if self.script else (HANG, 0)
        if kind == ERROR:
            raise ConnectionResetError("reset")
        if kind == END:
            raise StopAsyncIteration
        if kind == HANG:  # a read that never returns: only cancellation ends it
            await asyncio.Event().wait()
        return kind, n

    async def aclose(self) -> None:
        self.closes += 1


def meter(chunk: tuple[str, int]) -> int:
    return chunk[1] if chunk[0] == UNIT else NOT_A_UNIT


class AsyncEngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.sink = InMemoryReceiptSink()
        self.runtime = Runtime(
            Options.resolve({"stall_timeout": None}, environ={}),
            signer=HmacSigner(b"k" * 32, key_id="t"),
            sinks=[self.sink],
        )
        self.source = Source()
        self.guard: Any = self.loop.run_until_complete(self._make())
        self.core = self.guard._core
        self.frozen: tuple[int, ...] | None = None

    async def _make(self) -> Any:
        return GuardedAsyncIterator(
            self.source,
            aclose=self.source.aclose,
            meter=meter,
            runtime=self.runtime,
            stall_timeout=None,
        )

    def settle(self) -> None:
        # Let scheduled closes and callbacks run.
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))

    async def _read(self) -> None:
        with contextlib.suppress(StopAsyncIteration, StreamCancelled, ConnectionResetError):
            await self.guard.__anext__()

    @precondition(lambda self: self.guard is not None)
    @rule(kind=st.sampled_from([UNIT, UNIT, OTHER, ERROR, END]), tokens=st.integers(0, 9))
    def read(self, kind: str, tokens: int) -> None:
        self.source.script.append((kind, tokens))
        self.loop.run_until_complete(self._read())
        self.source.script.clear()
        self.settle()

    @precondition(lambda self: self.guard is not None)
    @rule(in_task=st.booleans())
    def cancel_the_reading_task(self, in_task: bool) -> None:
        async def go() -> None:
            task = asyncio.ensure_future(self._read())
            await asyncio.sleep(0.001)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.loop.run_until_complete(go())
        self.settle()

    @precondition(lambda self: self.guard is not None)
    @rule()
    def task_dies_inside_consumer_code(self) -> None:
        async def consumer() -> None:
            self.source.script.append((UNIT, 1))
            await self._read()
            raise KeyError("consumer bug")

        async def go() -> None:
            with contextlib.suppress(KeyError):
                await asyncio.ensure_future(consumer())

        self.loop.run_until_complete(go())
        self.source.script.clear()
        self.settle()

    @rule(reason=st.sampled_from(STOPS), from_thread=st.booleans())
    def stop(self, reason: StopReason, from_thread: bool) -> None:
        if from_thread:
            t = threading.Thread(target=self.core.request_stop, args=(reason, "test"))
            t.start()
            t.join()
        else:
            self.core.request_stop(reason, "test")
        self.settle()

    @precondition(lambda self: self.guard is not None)
    @rule()
    def aclose(self) -> None:
        self.loop.run_until_complete(self.guard.aclose())

    @precondition(lambda self: self.guard is not None)
    @rule()
    def drop(self) -> None:
        self.guard = None
        gc.collect()
        self.settle()

    @invariant()
    def accounting(self) -> None:
        c = self.core
        assert c.produced >= c.committed >= c.consumed >= 0
        assert c.produced_tokens >= c.committed_tokens >= c.consumed_tokens >= 0
        if c.stop_reason is None:
            assert self.source.closes == 0
            assert not self.sink.receipts
        else:
            counters = (c.produced, c.committed, c.consumed, c.produced_tokens)
            if self.frozen is None:
                self.frozen = counters
            assert counters == self.frozen
            assert self.source.closes == 1
            assert len(self.sink.receipts) == 1
            assert self.sink.receipts[0].reason == str(c.stop_reason)

    def teardown(self) -> None:
        self.guard = None
        gc.collect()
        self.settle()
        assert self.source.closes == 1
        assert len(self.sink.receipts) == 1
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        assert not pending, pending
        self.runtime.shutdown()
        self.loop.close()


AsyncEngineMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=20, deadline=None
)
# Generous: hundreds of random runs, each with threads; slow only on a loaded machine.
test_async_engine_state_machine = pytest.mark.timeout(300)(AsyncEngineMachine.TestCase)
