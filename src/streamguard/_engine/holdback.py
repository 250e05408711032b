"""Hold-back drivers: with a periodic or sentence-boundary policy, a chunk is handed over only
after a check has seen it, so blocked text never reaches the application.

Chunks read from upstream are counted as produced at once (they are paid for) and held until
every hold-back policy has evaluated past them; at most ``limit`` (N, ``max_buffered``) are
held before a check is forced. A block stops the stream: nothing held is handed over.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from streamguard._engine.core import HIDE, StreamCore
from streamguard._engine.drivers import AsyncDriver, Meter, SyncDriver, meter_fault
from streamguard._engine.reasons import StopReason

__all__ = ["HoldbackAsyncDriver", "HoldbackSyncDriver", "needs_holdback"]

_HOLDING = frozenset({"periodic", "sentence_boundary"})


def needs_holdback(core: StreamCore) -> list[Any]:
    """The policy runs that must see a chunk before it is handed over."""
    return [
        run
        for run in core.policy_runs or ()
        if run.policy.strategy in _HOLDING and run.policy.early_termination
    ]


class _Held:
    __slots__ = ("held", "limit", "ready", "runs")

    def __init__(self, runs: list[Any], limit: int) -> None:
        self.runs = runs
        self.limit = limit
        self.held: collections.deque[tuple[Any, int]] = collections.deque()
        self.ready: collections.deque[tuple[Any, int]] = collections.deque()

    def take(self, chunk: Any, tokens: int) -> None:
        self.held.append((chunk, tokens))
        if all(run.chars_since == 0 and run.tokens_since == 0 for run in self.runs):
            self.release()

    def release(self) -> None:
        self.ready.extend(self.held)
        self.held.clear()

    def must_force(self) -> bool:
        return len(self.held) >= self.limit


class HoldbackSyncDriver(SyncDriver):
    __slots__ = ("_hold",)

    def __init__(
        self,
        core: StreamCore,
        iterator: Iterator[Any] | None,
        meter: Meter | None,
        runs: list[Any],
        next_of: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(core, iterator, meter, next_of)
        self._hold = _Held(runs, core.runtime.options.max_buffered)

    def next(self, owner: Any = None) -> Any:
        core, hold = self.core, self._hold
        if core.consume_on_next:  # the ask: every unit handed over so far is consumed
            core._asked = core._n
        while not hold.ready:
            if core.stop_reason is not None:
                raise self._after_stop() or StopIteration
            if core.idle_clock:
                core.t_last = _now()
            core.in_read = True
            try:
                it = self._it
                chunk = next(it) if it is not None else self._next_of(owner)  # type: ignore[misc]
            except StopIteration:
                core.in_read = False
                self._end_of_stream()
                continue
            except BaseException as exc:
                self._raise_failed(exc)
            core.in_read = False
            try:
                tokens = self.meter(chunk)
            except Exception as exc:  # a chunk shape the meter does not know (G7)
                tokens = meter_fault(exc)
            if tokens == HIDE:
                continue
            if tokens >= 0 and not core.produce(tokens, chunk):
                raise self._after_stop() or StopIteration
            hold.take(chunk, tokens)
            if hold.must_force():
                _force(core, hold)
        return _hand_over(self, hold)

    def _end_of_stream(self) -> None:
        core, hold = self.core, self._hold
        if hold.held:
            _force(core, hold)
            if core.stop_reason is not None:
                return
        if not hold.ready and core.stop_reason is None:
            core.request_stop(StopReason.COMPLETED)
        self._it = iter(())


class HoldbackAsyncDriver(AsyncDriver):
    __slots__ = ("_hold",)

    def __init__(
        self,
        core: StreamCore,
        iterator: AsyncIterator[Any] | None,
        meter: Meter | None,
        runs: list[Any],
        anext_of: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> None:
        super().__init__(core, iterator, meter, anext_of)
        self._hold = _Held(runs, core.runtime.options.max_buffered)

    async def next(self, owner: Any = None) -> Any:
        core, hold = self.core, self._hold
        if core.consume_on_next:  # the ask: every unit handed over so far is consumed
            core._asked = core._n
        task = self._current_task()
        followed = core._followed
        if followed is None or followed[0] is not task:
            self._follow(task)
        while not hold.ready:
            if core.stop_reason is not None:
                raise self._after_stop() or StopAsyncIteration
            if core.idle_clock:
                core.t_last = _now()
            core.in_read = True
            try:
                ait = self._ait
                chunk = await (ait.__anext__() if ait is not None else self._anext_of(owner))  # type: ignore[misc]
            except StopAsyncIteration:
                core.in_read = False
                if hold.held:
                    await _force_async(core, hold)
                    if core.stop_reason is not None:
                        continue
                if not hold.ready and core.stop_reason is None:
                    core.request_stop(StopReason.COMPLETED)
                self._ait = _empty()
                continue
            except BaseException as exc:
                self._raise_failed(exc)
            core.in_read = False
            try:
                tokens = self.meter(chunk)
            except Exception as exc:  # a chunk shape the meter does not know (G7)
                tokens = meter_fault(exc)
            if tokens == HIDE:
                continue
            if tokens >= 0:
                if not core.produce(tokens, chunk):
                    raise self._after_stop() or StopAsyncIteration
                if core.async_checks is not None:
                    from streamguard._engine.drivers import _async_checks

                    if not await _async_checks(core, chunk, tokens):
                        raise self._after_stop() or StopAsyncIteration
            hold.take(chunk, tokens)
            if hold.must_force():
                await _force_async(core, hold)
        return _hand_over(self, hold)


def _hand_over(driver: Any, hold: _Held) -> Any:
    core = driver.core
    chunk, tokens = hold.ready.popleft()
    if tokens >= 0 and not core.commit(tokens):
        raise driver._after_stop() or (
            StopAsyncIteration if isinstance(driver, AsyncDriver) else StopIteration
        )
    return chunk


def _force(core: StreamCore, hold: _Held) -> None:
    """Check everything held now (the buffer is full, or the stream ended)."""
    for run in hold.runs:
        if run.chars_since or run.tokens_since:
            run.apply(core, run.evaluate())
            if core.stop_reason is not None:
                return
    hold.release()


async def _force_async(core: StreamCore, hold: _Held) -> None:
    for run in hold.runs:
        if run.chars_since or run.tokens_since:
            run.apply(core, await run.evaluate_async())
            if core.stop_reason is not None:
                return
    hold.release()


async def _empty_gen() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


def _empty() -> AsyncIterator[Any]:
    return _empty_gen()


def _now() -> int:
    import time

    return time.monotonic_ns()


def sync_driver(
    core: StreamCore,
    iterator: Iterator[Any] | None,
    meter: Meter | None,
    next_of: Callable[[Any], Any] | None = None,
) -> SyncDriver:
    """The driver for a sync stream: a hold-back one when a policy needs it (``next_of``:
    see ``SyncDriver``)."""
    runs = needs_holdback(core)
    if runs:
        return HoldbackSyncDriver(core, iterator, meter, runs, next_of)
    return SyncDriver(core, iterator, meter, next_of)


def async_driver(
    core: StreamCore,
    iterator: AsyncIterator[Any] | None,
    meter: Meter | None,
    anext_of: Callable[[Any], Awaitable[Any]] | None = None,
) -> AsyncDriver:
    runs = needs_holdback(core)
    if runs:
        return HoldbackAsyncDriver(core, iterator, meter, runs, anext_of)
    return AsyncDriver(core, iterator, meter, anext_of)
