"""Sync and async drivers: pull chunks from an upstream iterator through a ``StreamCore``.

A driver is the read boundary. Every ``next`` marks the previous unit consumed, reads one
chunk, classifies it with the provider's meter and admits it through the core, so that nothing
reaches the application after the cutoff. Every exception at the boundary, ``BaseException``
included, stops the stream before it propagates: cancellation is an outcome, not an error.

The generic guards at the bottom wrap any iterator or async iterator plus a close callable;
provider guards reuse the drivers with their own meters and closers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn, TypeVar

from streamguard._engine import ports
from streamguard._engine.core import HIDE, StreamCore
from streamguard._engine.reasons import StopReason
from streamguard.exceptions import BudgetExceeded, StreamBlocked, StreamCancelled

__all__ = ["AsyncDriver", "Meter", "SyncDriver", "meter_fault", "stop_error"]

T = TypeVar("T")
#: chunk -> tokens it carries (>= 0: a unit), NOT_A_UNIT (pass through) or HIDE (drop).
Meter = Callable[[Any], int]

_monotonic_ns = time.monotonic_ns
# Stops after which reading on just ends: the stream completed, or whoever would read the
# rest is gone (the consumer closed it, was cancelled, or its HTTP client disconnected).
_QUIET = frozenset(
    {
        StopReason.COMPLETED,
        StopReason.CONSUMER_CLOSED,
        StopReason.CONSUMER_CANCELLED,
        StopReason.CLIENT_DISCONNECT,
    }
)


def _one_unit(chunk: object) -> int:
    return 1


def meter_fault(exc: Exception) -> int:
    """A meter failed on a chunk: report it once, count the chunk as one unit, go on."""
    ports.report_fault("meter", exc)
    return 1


def stop_error(core: StreamCore) -> BaseException | None:
    """What the application gets when it reads a stream the guard has stopped.

    None (the iteration just ends) when the stream completed or its consumer left;
    the policy exceptions for budget and content stops; ``StreamCancelled`` for every other
    stop, so a truncated answer is never mistaken for a complete one.
    """
    reason = core.stop_reason
    if reason is None or reason in _QUIET:
        return None
    if core.stop_exc is not None:
        return core.stop_exc
    detail = core.detail or str(reason)
    if reason is StopReason.BUDGET_EXCEEDED:
        return BudgetExceeded(f"Budget exceeded: {detail}.", stream_id=core.stream_id)
    if reason is StopReason.CONTENT_POLICY:
        return StreamBlocked(f"Output blocked: {detail}.", stream_id=core.stream_id)
    return StreamCancelled(
        f"StreamGuard stopped stream {core.stream_id} ({reason}): {detail}.",
        reason=str(reason),
        stream_id=core.stream_id,
    )


class _Driver:
    __slots__ = ("__weakref__", "_errored", "core", "meter")

    def __init__(self, core: StreamCore, meter: Meter | None) -> None:
        self.core = core
        self.meter = meter or _one_unit
        self._errored = False

    def _after_stop(self) -> BaseException | None:
        """The exception for a read after the stop: raised once, then the iteration ends."""
        if self._errored:
            return None
        self._errored = True
        return stop_error(self.core)

    def _raise_failed(self, exc: BaseException) -> NoReturn:
        """An exception at the read boundary: stop the stream, then raise it (or, when the
        guard had already cut the stream and the SDK only noticed, the stop's exception)."""
        replacement = self._upstream_failed(exc)
        if replacement is not None and replacement is not exc:
            raise replacement from exc
        raise exc

    def _upstream_failed(self, exc: BaseException) -> BaseException | None:
        """Stop the stream for ``exc``; return what to raise instead, if anything."""
        core = self.core
        core.in_read = False
        if not isinstance(exc, Exception):
            # Cancellation (asyncio's CancelledError, trio's Cancelled, KeyboardInterrupt...)
            # is an outcome, not an error, and always propagates as it is.
            core.request_stop(
                StopReason.CONSUMER_CANCELLED, f"{type(exc).__name__} at the read boundary"
            )
            return None
        if core.stop_reason is not None:
            # The guard cut the stream (deadline, cancel from elsewhere) and the SDK noticed.
            return self._after_stop() or exc
        self._errored = True
        core.request_stop(
            StopReason.UPSTREAM_ERROR, f"{type(exc).__name__}: {exc}"[:300], error=exc
        )
        return None


class SyncDriver(_Driver):
    """Reads a sync iterator through the core."""

    __slots__ = ("_it",)

    def __init__(self, core: StreamCore, iterator: Iterator[Any], meter: Meter | None) -> None:
        super().__init__(core, meter)
        self._it = iterator

    def next(self) -> Any:
        core = self.core
        if core._pending and core.consume_on_next:
            core.consume_due = True
        if core.stop_reason is not None:
            raise self._after_stop() or StopIteration
        if core.idle_clock:
            core.t_last = _monotonic_ns()
        core.in_read = True
        meter = self.meter
        try:
            while True:
                chunk = next(self._it)
                try:
                    tokens = meter(chunk)
                except Exception as exc:  # a chunk shape the meter does not know (G7)
                    tokens = meter_fault(exc)
                if tokens != HIDE:
                    break
        except StopIteration:
            core.in_read = False
            if core.stop_reason is None:
                core.request_stop(StopReason.COMPLETED)
                raise
            raise self._after_stop() or StopIteration from None
        except BaseException as exc:
            self._raise_failed(exc)
        core.in_read = False
        if tokens >= 0:
            if not core.admit(tokens, chunk):
                raise self._after_stop() or StopIteration
        elif core.stop_reason is not None:
            raise self._after_stop() or StopIteration
        return chunk

    def close(
        self, reason: StopReason = StopReason.CONSUMER_CLOSED, detail: str | None = None
    ) -> None:
        """Always closes the upstream; a second call is a no-op."""
        self.core.request_stop(reason, detail)


class AsyncDriver(_Driver):
    """Reads an async iterator through the core; watches the task that iterates it.

    Works on any event loop the core's home supports (asyncio, uvloop, trio): the current
    task comes from the home, found once when the upstream was bound.
    """

    __slots__ = ("_ait", "_current_task", "_task")

    def __init__(self, core: StreamCore, iterator: AsyncIterator[Any], meter: Meter | None) -> None:
        super().__init__(core, meter)
        self._ait = iterator
        self._task: Any = None
        if core._home is None:
            from streamguard._engine.aio import current_home

            core._home = current_home()
        self._current_task = core._home.current_task

    async def next(self) -> Any:
        core = self.core
        if core._pending and core.consume_on_next:
            core.consume_due = True
        if core.stop_reason is not None:
            raise self._after_stop() or StopAsyncIteration
        task = self._current_task()
        if task is not self._task:
            self._follow(task)
        if core.idle_clock:
            core.t_last = _monotonic_ns()
        core.in_read = True
        meter = self.meter
        try:
            while True:
                chunk = await self._ait.__anext__()
                try:
                    tokens = meter(chunk)
                except Exception as exc:  # a chunk shape the meter does not know (G7)
                    tokens = meter_fault(exc)
                if tokens != HIDE:
                    break
        except StopAsyncIteration:
            core.in_read = False
            if core.stop_reason is None:
                core.request_stop(StopReason.COMPLETED)
                raise
            raise self._after_stop() or StopAsyncIteration from None
        except BaseException as exc:
            self._raise_failed(exc)
        core.in_read = False
        if tokens >= 0:
            if core.async_checks is None:
                if not core.admit(tokens, chunk):
                    raise self._after_stop() or StopAsyncIteration
            elif not (
                core.produce(tokens, chunk)
                and await _async_checks(core, chunk, tokens)
                and core.commit(tokens)
            ):
                raise self._after_stop() or StopAsyncIteration
        elif core.stop_reason is not None:
            raise self._after_stop() or StopAsyncIteration
        return chunk

    def _follow(self, task: Any) -> None:
        # The end of the task that iterates the stream is a stop signal (see aio: how each
        # loop watches it). The watch is dropped when the stream stops (StreamCore._detach),
        # so a long-lived task that consumes many streams keeps none of them.
        core = self.core
        if core.stop_reason is not None:
            return
        self._task = task
        home = core._home
        assert home is not None
        old, core._followed = core._followed, None
        if old is not None:
            home.unfollow(*old)
        if task is not None:
            core._followed = (task, home.follow(task, core))

    async def aclose(
        self, reason: StopReason = StopReason.CONSUMER_CLOSED, detail: str | None = None
    ) -> None:
        """Always closes the upstream, even when cancelled; a second call is a no-op."""
        await self.core.stop_async(reason, detail)


async def _async_checks(core: StreamCore, chunk: Any, tokens: int) -> bool:
    """Async policy checks, awaited between produced and committed (never blocking the loop)."""
    text = core.text_of(chunk) if core.text_of is not None else None
    for run in core.async_checks or ():
        if run.due(text or "", tokens):
            run.apply(core, await run.evaluate_async())
            if core.stop_reason is not None:
                return False
    return core.stop_reason is None
