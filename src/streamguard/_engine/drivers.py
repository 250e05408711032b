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
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn, TypeVar, cast

from streamguard._engine import ports
from streamguard._engine.core import HIDE, StreamCore
from streamguard._engine.reasons import StopReason
from streamguard.exceptions import BudgetExceeded, StreamBlocked, StreamCancelled

__all__ = ["AsyncDriver", "Meter", "SyncDriver", "meter_fault", "stop_error"]

T = TypeVar("T")
#: chunk -> tokens it carries (>= 0: a unit), NOT_A_UNIT (pass through) or HIDE (drop).
Meter = Callable[[Any], int]

_monotonic_ns = time.monotonic_ns
_time_ns = time.time_ns
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


def _fast_call(meter: Meter) -> Meter:
    """A meter object's bound ``__call__``: calling it skips the type-slot lookup that calling
    the object itself goes through (a few dozen ns on every chunk)."""
    if isinstance(vars(type(meter)).get("__call__"), types.FunctionType):
        return cast(Meter, meter.__call__)  # type: ignore[operator]
    return meter


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
        self.meter = _fast_call(meter) if meter is not None else _one_unit
        self._errored = False

    def _after_stop(self) -> BaseException | None:
        """The exception for a read after the stop: raised once, then the iteration ends."""
        if self._errored:
            return None
        self._errored = True
        return stop_error(self.core)

    #: What ends this driver's iteration (StopIteration or StopAsyncIteration).
    _END: type[Exception] = StopIteration

    def _raise_failed(self, exc: BaseException) -> NoReturn:
        """An exception at the read boundary: stop the stream, then raise it (or, when the
        guard had already cut the stream and the SDK only noticed, the stop's exception; or
        the end of the iteration when that stop was a quiet one, the consumer having left:
        a read another thread was in when the consumer closed the stream ends, it does not
        raise the transport error the guard's own socket shutdown caused)."""
        replacement = self._upstream_failed(exc)
        if replacement is not None and replacement is not exc:
            raise replacement from exc
        if replacement is exc and self.core.stop_reason in _QUIET:
            raise self._END from None
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
    """Reads a sync iterator through the core.

    ``next_of`` (with ``iterator`` None) is for a stream guarded in place whose SDK iteration
    must run on the stream itself (anthropic's observer sees every item): the SDK's unbound
    ``__next__``, called with the stream the caller passes to ``next``. The driver never holds
    that stream (PROVIDERS.md pitfall 12), and no layer is added per chunk to reach it.
    """

    __slots__ = ("_it", "_next_of")

    def __init__(
        self,
        core: StreamCore,
        iterator: Iterator[Any] | None,
        meter: Meter | None,
        next_of: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(core, meter)
        self._it = iterator
        self._next_of = next_of

    def next(self, owner: Any = None) -> Any:
        """The next chunk for the application; ``owner`` is the stream guarded in place."""
        core = self.core
        if core.consume_on_next:  # the ask: every unit handed over so far is consumed
            core._asked = core._n
        if core.stop_reason is not None:
            raise self._after_stop() or StopIteration
        if core.idle_clock:
            core.t_last = _monotonic_ns()
        core.in_read = True
        meter = self.meter
        try:
            while True:
                it = self._it
                chunk = next(it) if it is not None else self._next_of(owner)  # type: ignore[misc]
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
            if core.checks is None and core.consume_on_next and core.stop_reason is None:
                # StreamCore.admit's common case, inlined (no call per chunk): see its
                # "Counters" comment for why one tuple store and a second look suffice.
                p, pt, c, ct = core._n
                n = core._n = (p + 1, pt + tokens, c + 1, ct + tokens)
                if core.watch is not None:  # a timer reads the stall clock
                    core.t_last = _monotonic_ns()
                if core.t_first_chunk is None:
                    core.t_first_chunk = _time_ns()
                if core.stop_reason is not None and not core._cut(n, tokens):
                    raise self._after_stop() or StopIteration
            elif not core.admit(tokens, chunk):
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
    task comes from the home (``Home.task_getter``, its cheapest form), found once when the
    upstream was bound. ``anext_of`` is ``SyncDriver``'s ``next_of`` for async streams.
    """

    __slots__ = ("_ait", "_anext_of", "_current_task", "_task")
    _END = StopAsyncIteration

    def __init__(
        self,
        core: StreamCore,
        iterator: AsyncIterator[Any] | None,
        meter: Meter | None,
        anext_of: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> None:
        super().__init__(core, meter)
        self._ait = iterator
        self._anext_of = anext_of
        self._task: Any = None
        if core._home is None:
            from streamguard._engine.aio import current_home

            core._home = current_home()
        self._current_task = core._home.task_getter()

    async def next(self, owner: Any = None) -> Any:
        """The next chunk for the application. ``owner``, the stream guarded in place, is also
        held by this coroutine until it is awaited, as the SDK's own awaitable holds its
        stream: in ``anext(await client.messages.create(stream=True))`` the stream is dropped
        before the read, and must not be closed as abandoned."""
        core = self.core
        if core.consume_on_next:  # the ask: every unit handed over so far is consumed
            core._asked = core._n
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
                ait = self._ait  # anext(): the type slot, no attribute lookup
                chunk = await (anext(ait) if ait is not None else self._anext_of(owner))  # type: ignore[misc]
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
            if (
                core.checks is None
                and core.async_checks is None
                and core.consume_on_next
                and core.stop_reason is None
            ):
                # StreamCore.admit's common case, inlined: see SyncDriver.next.
                p, pt, c, ct = core._n
                n = core._n = (p + 1, pt + tokens, c + 1, ct + tokens)
                if core.watch is not None:  # a timer reads the stall clock
                    core.t_last = _monotonic_ns()
                if core.t_first_chunk is None:
                    core.t_first_chunk = _time_ns()
                if core.stop_reason is not None and not core._cut(n, tokens):
                    raise self._after_stop() or StopAsyncIteration
            elif core.async_checks is None:
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
            home.unfollow(old)
        if task is not None:
            core._followed = home.follow(task, core)

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
