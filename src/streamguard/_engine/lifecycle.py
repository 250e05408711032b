"""How a stream ends: the stop signal, closing the upstream once, and waiting for the receipt.

Floor: ``_engine``. ``Lifecycle`` is ``StreamCore``'s base: the state lives in ``StreamCore``'s
slots (declared here only as annotations), the per-unit counters in ``core.py``. Nothing here
runs per unit: a stream passes through these methods once, when it stops. Being a base class
adds no call on any path (the methods are found on the class, as if defined there).

- The first stop signal wins (``request_stop`` returns True once); later ones are recorded
  and change nothing.
- The upstream is closed exactly once, whoever stops the stream and from whichever thread;
  an async upstream is closed on its own event loop (its ``Home``), where the stream's timer
  and the watch on its task are dropped too.
- ``runtime.finalize`` runs once, after the upstream is closed, on every path; it seals the
  receipt and calls ``mark_final``.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from streamguard._engine.aio import Home
    from streamguard._engine.core import StreamCore
    from streamguard._engine.ports import Host
    from streamguard._engine.reasons import StopReason
    from streamguard._receipts.model import Receipt

__all__ = ["CLOSED", "FINAL", "OPEN", "STOPPING", "Lifecycle"]

OPEN, STOPPING, CLOSED, FINAL = 0, 1, 2, 3

_monotonic_ns = time.monotonic_ns
_time_ns = time.time_ns


def _core(stream: Lifecycle) -> StreamCore:
    """A ``Lifecycle`` is always a ``StreamCore``: what the ports (host, timers, home) take."""
    return cast("StreamCore", stream)


class Lifecycle:
    """Stopping, closing and finishing one stream; thread-safe. Mixed into ``StreamCore``."""

    # The whole state of a stream, for both halves (this one and core.py's counters).
    __slots__ = (
        "__weakref__",
        "_abort",
        "_aclose",
        "_close",
        "_final_event",
        "_followed",
        "_home",
        "_later",
        "_lock",
        "_pending",
        "_receipt_waiters",
        "async_checks",
        "attributes",
        "cached_input_tokens",
        "checks",
        "committed",
        "committed_tokens",
        "consume_due",
        "consume_on_next",
        "consumed",
        "consumed_tokens",
        "deadline",
        "detail",
        "error_type",
        "estimated_output_tokens",
        "finish_reasons",
        "idle_clock",
        "in_read",
        "input_tokens",
        "model",
        "operation",
        "phase",
        "policy_runs",
        "post_cutoff",
        "post_cutoff_tokens",
        "produced",
        "produced_tokens",
        "provider",
        "receipt",
        "rejected",
        "request_max_tokens",
        "response_id",
        "response_model",
        "runtime",
        "server_address",
        "server_port",
        "span",
        "spend",
        "stop_exc",
        "stop_reason",
        "stream_id",
        "t_first_chunk",
        "t_last",
        "t_started",
        "t_started_mono",
        "t_stop_mono",
        "t_stop_requested",
        "t_upstream_closed",
        "t_upstream_closed_mono",
        "text_of",
        "timer_entry",
        "usage_exact",
        "watch",
    )

    # StreamCore's slots that ending a stream reads or writes.
    runtime: Host
    phase: int
    stop_reason: StopReason | None
    detail: str | None
    error_type: str | None
    rejected: bool
    receipt: Receipt | None
    consume_due: bool
    checks: list[Callable[[Any, Any, int], None]] | None
    async_checks: list[Any] | None
    timer_entry: list[Any] | None
    t_stop_requested: int | None
    t_stop_mono: int | None
    t_upstream_closed: int | None
    t_upstream_closed_mono: int | None
    _lock: threading.Lock
    _later: list[str]
    _close: Callable[[], object] | None
    _aclose: Callable[[], Awaitable[object]] | None
    _abort: Callable[[], object] | None
    _home: Home | None
    _followed: tuple[Any, Any] | None
    _final_event: threading.Event
    _pending: collections.deque[int]
    consumed: int
    consumed_tokens: int
    _receipt_waiters: list[Callable[[], object]]

    def _consume_due_locked(self) -> None:
        self.consume_due = False
        pending = self._pending
        while pending:
            self.consumed_tokens += pending.popleft()
            self.consumed += 1

    # ----------------------------------------------------------------- upstream binding
    def bind_upstream(
        self,
        close: Callable[[], object] | None = None,
        aclose: Callable[[], Awaitable[object]] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        abort: Callable[[], object] | None = None,
    ) -> None:
        """Say how to close the upstream: ``close`` (sync) and/or ``aclose``.

        ``aclose`` runs on the event loop that runs this call (asyncio, uvloop or trio), or
        on the asyncio ``loop`` given. ``abort`` (async upstreams) shuts the connection at once
        from any thread, so the server sees the disconnect even before ``aclose`` gets to run
        on its loop. The callables must not reference the guard the application holds.
        """
        self._close = close
        self._aclose = aclose
        self._abort = abort
        if aclose is not None:
            from streamguard._engine.aio import asyncio_home, current_home

            self._home = asyncio_home(loop) if loop is not None else current_home()
        if aclose is None and self.async_checks is not None:
            from streamguard._engine.policy import sync_checker

            self.checks = [*(self.checks or ()), sync_checker(self.async_checks)]
            self.async_checks = None

    # ------------------------------------------------------------------------ stopping
    def request_stop(
        self,
        reason: StopReason,
        detail: str | None = None,
        *,
        error: BaseException | None = None,
        rejected: bool = False,
    ) -> bool:
        """Stop the stream: cut the counters, close the upstream, then seal the receipt.

        Safe from any thread. The first call wins and returns True; later calls are recorded
        and return False. An async upstream is closed by a task on its own loop; this call does
        not wait for it (use ``stop_async`` inside a coroutine to wait).
        """
        with self._lock:
            if self.stop_reason is not None:
                if len(self._later) < 16:
                    self._later.append(str(reason))
                return False
            if self.consume_due:  # the ask came before this stop
                self._consume_due_locked()
            self.stop_reason = reason
            self.detail = detail
            self.rejected = rejected
            if error is not None:
                self.error_type = type(error).__qualname__
            self.t_stop_requested = _time_ns()
            self.t_stop_mono = _monotonic_ns()
            self.phase = STOPPING
        self.runtime.unwatch(_core(self))
        self._close_upstream()
        return True

    async def stop_async(self, reason: StopReason, detail: str | None = None) -> bool:
        """``request_stop`` from a coroutine, waiting until the receipt is sealed."""
        first = self.request_stop(reason, detail)
        await self.wait_final_async()
        return first

    def _close_upstream(self) -> None:
        aclose, home = self._aclose, self._home
        if aclose is not None and home is not None:
            self._aclose = None
            abort, self._abort = self._abort, None
            if abort is not None:
                try:
                    abort()
                except Exception as exc:  # aclose still runs; the receipt says what happened
                    self.detail = (
                        self.detail or f"aborting the upstream raised {type(exc).__name__}"
                    )

            async def run_aclose() -> None:
                await self._run_aclose(aclose)

            if home.here():
                home.spawn(run_aclose)
                return
            if home.run_soon(lambda: home.spawn(run_aclose)):
                return
            self.detail = self.detail or "the upstream's event loop was closed"
            self._closed()
            return
        close, self._close = self._close, None
        try:
            if close is not None:
                close()
        except Exception as exc:  # the upstream is gone either way; say so in the receipt
            self.detail = self.detail or f"closing the upstream raised {type(exc).__name__}"
        self._closed()

    async def _run_aclose(self, aclose: Callable[[], Awaitable[object]]) -> None:
        self._detach()
        try:
            await aclose()
        except BaseException as exc:  # cancellation of the closer must not skip the receipt
            self.detail = self.detail or f"closing the upstream raised {type(exc).__name__}"
            self._closed()
            if not isinstance(exc, Exception):
                raise
            return
        self._closed()

    def _detach(self) -> None:
        """On the stream's loop, once stopped: drop its timer and the watch on its task."""
        home = self._home
        if home is None:
            return
        if self.timer_entry is not None:
            home.timers.cancel(_core(self))
        followed, self._followed = self._followed, None
        if followed is not None:
            home.unfollow(*followed)

    def _closed(self) -> None:
        with self._lock:
            if self.phase >= CLOSED:
                return
            self.phase = CLOSED
            self.t_upstream_closed = _time_ns()
            self.t_upstream_closed_mono = _monotonic_ns()
        self.runtime.finalize(_core(self))

    # ------------------------------------------------------------------------ finishing
    def mark_final(self, receipt: Receipt | None) -> None:
        """Called once by the runtime after the receipt is sealed and emitted."""
        with self._lock:
            self.receipt = receipt
            self.phase = FINAL
            waiters, self._receipt_waiters = self._receipt_waiters, []
        self._final_event.set()
        for notify in waiters:
            notify()

    def add_final_waiter(self, notify: Callable[[], object]) -> bool:
        """Call ``notify`` (from any thread) once final; False, not calling it, if it is."""
        with self._lock:
            if self.phase == FINAL:
                return False
            self._receipt_waiters.append(notify)
        return True

    def wait_final(self, timeout: float | None = None) -> Receipt | None:
        """Block until the receipt is sealed (or ``timeout``); returns it."""
        self._final_event.wait(timeout)
        return self.receipt

    async def wait_final_async(self) -> Receipt | None:
        """Wait, on whichever event loop runs this, until the receipt is sealed."""
        if self.phase == FINAL:
            return self.receipt
        home = self._home
        if home is None or not home.here():
            from streamguard._engine.aio import current_home

            home = current_home()
        await home.wait(_core(self))
        return self.receipt

    def later_signals(self) -> list[str]:
        return list(self._later)
