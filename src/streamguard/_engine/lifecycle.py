"""How a stream ends: the stop signal, closing the upstream once, and waiting for the receipt.

Floor: ``_engine``. ``Lifecycle`` is ``StreamCore``'s base: the state lives in ``StreamCore``'s
slots (declared here only as annotations), the per-unit counters in ``core.py``. Nothing here
runs per unit: a stream passes through these methods once, when it stops. Being a base class
adds no call on any path (the methods are found on the class, as if defined there).

- The first stop signal wins (``request_stop`` returns True once); later ones are recorded
  and change nothing.
- The upstream is closed exactly once, whoever stops the stream and from whichever thread;
  an async upstream is closed on its own event loop (its ``Home``), where the stream's timer
  and the watch on its task are dropped too. Stopped from elsewhere, its socket is shut down
  at once from the stopping thread (``abort``); when that loop is not running, the stream is
  finalized then, not when (if ever) the loop runs the close. The consumer's own ``await
  close()`` on that loop runs the close inline, as the bare SDK's does (``stop_async``).
- ``runtime.finalize`` runs once, after the upstream is closed, on every path; the runtime
  seals the receipt (on its receipt writer's thread, so the stopping thread does not wait for
  it) and calls ``mark_final``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from streamguard._engine.phases import CLOSED, FINAL, OPEN, STOPPING

if TYPE_CHECKING:
    from streamguard._engine.aio import Home
    from streamguard._engine.core import StreamCore
    from streamguard._engine.looptimers import TimerEntry
    from streamguard._engine.ports import Host
    from streamguard._engine.reasons import StopReason
    from streamguard._receipts.model import Receipt

__all__ = ["CLOSED", "FINAL", "OPEN", "STOPPING", "Lifecycle"]

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
        "_asked",
        "_close",
        "_closed_waiters",
        "_ext_consumed",
        "_ext_consumed_tokens",
        "_final_event",
        "_finish_reasons",
        "_followed",
        "_frozen",
        "_frozen_asked",
        "_home",
        "_later",
        "_lock",
        "_n",
        "_pending",
        "_receipt_waiters",
        "async_checks",
        "attributes",
        "cached_input_tokens",
        "checks",
        "consume_on_next",
        "deadline",
        "detail",
        "error_type",
        "estimated_output_tokens",
        "idle_clock",
        "in_read",
        "input_tokens",
        "model",
        "operation",
        "phase",
        "policy_runs",
        "post_cutoff",
        "post_cutoff_tokens",
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
    in_read: bool
    receipt: Receipt | None
    checks: list[Callable[[Any, Any, int], None]] | None
    async_checks: list[Any] | None
    timer_entry: TimerEntry | None
    t_stop_requested: int | None
    t_stop_mono: int | None
    t_upstream_closed: int | None
    t_upstream_closed_mono: int | None
    _lock: threading.Lock
    _later: list[str] | None
    _close: Callable[[], object] | None
    _aclose: Callable[[], Awaitable[object]] | None
    _abort: Callable[[], object] | None
    _home: Home | None
    _followed: tuple[Any, Any] | None
    _final_event: threading.Event | None
    # None until the first entry: most streams never have one (56 bytes each otherwise).
    _receipt_waiters: list[Callable[[], object]] | None
    _closed_waiters: list[Callable[[], object]] | None

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
        if self.stop_reason is not None:
            # Stopped before its upstream was bound (an owner scope that had already stopped
            # adopted it while the request was being sent): the response just bound is closed
            # now, or the server would go on generating for nobody.
            self._close_upstream()

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
        if not self._stop_first(reason, detail, error, rejected):
            return False
        self._close_upstream()
        return True

    def _stop_first(
        self,
        reason: StopReason,
        detail: str | None,
        error: BaseException | None = None,
        rejected: bool = False,
    ) -> bool:
        """Record the stop signal; True if it is the first (the caller then closes)."""
        with self._lock:
            if self.stop_reason is not None:
                later = self._later
                if later is None:
                    later = self._later = []
                if len(later) < 16:
                    later.append(str(reason))
                return False
            self.stop_reason = reason  # first: a unit racing with the stop sees it (core.py)
            _core(self)._freeze()
            self.detail = detail
            self.rejected = rejected
            if error is not None:
                self.error_type = type(error).__qualname__
            self.t_stop_requested = _time_ns()
            self.t_stop_mono = _monotonic_ns()
            self.phase = STOPPING
        self.runtime.unwatch(_core(self))
        return True

    async def stop_async(self, reason: StopReason, detail: str | None = None) -> bool:
        """``request_stop`` from a coroutine, waiting until the upstream is closed.

        Awaited on the stream's own loop by the first stop (the consumer's ``close()``) of an
        upstream with a socket to shut (``abort``: every SDK's), the upstream's ``aclose`` runs
        right here in the caller's task, as the bare SDK's close does: no task, no future, no
        loop turn of its own. Always closes the upstream, even when cancelled: a close that is
        cancelled or fails part-way shuts the socket down before the exception propagates
        (the SDKs' HTTP clients also close the connection under a cancellation shield), and
        the stream is finalized, its receipt produced once, either way. The socket is shut
        first only while another task awaits a chunk (it must wake now). Anywhere else
        (another loop or thread, a stream already stopping, an upstream with no socket, whose
        close only a task of its own finishes whatever happens to the caller) this waits for
        the close that runs in a task on the stream's loop. The receipt is sealed just after,
        off this loop (``wait_final_async`` waits for it; ``handle.receipt`` does too once the
        upstream is closed).
        """
        home = self._home
        if (
            self._abort is not None
            and self._aclose is not None
            and home is not None
            and home.here()
        ):
            first = self._stop_first(reason, detail)
            # Not the first stop, or its closer taken meanwhile: wait for that close instead.
            aclose, abort = self._take_aclose() if first else (None, None)
            if aclose is not None:
                if self.in_read:
                    # Another task on this loop is awaiting a chunk: it wakes now, not when
                    # the close gets to the socket.
                    self._abort_upstream(abort)
                    abort = None
                await self._run_aclose(aclose, abort)
                return True
        else:
            first = self.request_stop(reason, detail)
        if self.phase < CLOSED:
            await self._wait_async(closed=True)
        return first

    def _take_aclose(
        self,
    ) -> tuple[Callable[[], Awaitable[object]] | None, Callable[[], object] | None]:
        """Claim the async closer and the socket abort (once)."""
        aclose, self._aclose = self._aclose, None
        abort, self._abort = self._abort, None
        return aclose, abort

    def _abort_upstream(self, abort: Callable[[], object] | None) -> bool:
        """Shut the upstream's socket down from this thread; False if that raised."""
        if abort is None:
            return True
        try:
            abort()
        except Exception as exc:  # aclose still runs; the receipt says what happened
            self.detail = self.detail or f"aborting the upstream raised {type(exc).__name__}"
            return False
        return True

    def _close_upstream(self) -> None:
        home = self._home
        if self._aclose is not None and home is not None:
            aclose, abort = self._take_aclose()
            assert aclose is not None
            if not self._abort_upstream(abort):
                abort = None

            async def run_aclose() -> None:
                await self._run_aclose(aclose)

            if home.here():
                home.spawn(run_aclose)
                return
            if home.run_soon(lambda: home.spawn(run_aclose)):
                if home.running():
                    return
                # A loop that is not running (stopped between run_until_complete calls, its
                # thread gone) runs the aclose only if it runs again, maybe never: the receipt
                # does not wait for it. The socket was shut down from this thread above.
                if abort is None:
                    self.detail = self.detail or (
                        "the upstream's event loop is not running: its connection is closed "
                        "when the loop runs again"
                    )
            else:
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

    async def _run_aclose(
        self,
        aclose: Callable[[], Awaitable[object]],
        abort: Callable[[], object] | None = None,
    ) -> None:
        """Close the upstream on its loop, then finalize; ``abort``, not yet run, shuts the
        socket if the close fails or is cancelled part-way (the SDKs' HTTP clients close the
        connection itself under a cancellation shield; this makes sure of it)."""
        self._detach()
        try:
            await aclose()
        except BaseException as exc:  # cancellation of the closer must not skip the receipt
            self.detail = self.detail or f"closing the upstream raised {type(exc).__name__}"
            self._abort_upstream(abort)
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
        if followed is not None and followed[0] is not None:
            home.unfollow(*followed)

    def _closed(self) -> None:
        with self._lock:
            if self.phase >= CLOSED:
                return
            self.phase = CLOSED
            self.t_upstream_closed = _time_ns()
            self.t_upstream_closed_mono = _monotonic_ns()
            waiters, self._closed_waiters = self._closed_waiters, None
        for notify in waiters or ():
            notify()
        self.runtime.finalize(_core(self))

    # ------------------------------------------------------------------------ finishing
    def mark_final(self, receipt: Receipt | None) -> None:
        """Called once by the runtime (from any thread) after the receipt is sealed and
        emitted; wakes ``wait_final``, ``wait_final_async`` and the final waiters."""
        with self._lock:
            self.receipt = receipt
            self.phase = FINAL
            waiters = [*(self._receipt_waiters or ()), *(self._closed_waiters or ())]
            self._receipt_waiters = self._closed_waiters = None  # (closing notified those)
            event = self._final_event
        if event is not None:
            event.set()
        for notify in waiters:
            notify()

    def add_final_waiter(self, notify: Callable[[], object], *, closed: bool = False) -> bool:
        """Call ``notify`` (from any thread) once final (``closed``: once the upstream is
        closed); False, not calling it, if it already is."""
        with self._lock:
            if closed:
                if self.phase >= CLOSED:
                    return False
                if self._closed_waiters is None:
                    self._closed_waiters = []
                self._closed_waiters.append(notify)
                return True
            if self.phase == FINAL:
                return False
            if self._receipt_waiters is None:
                self._receipt_waiters = []
            self._receipt_waiters.append(notify)
        return True

    def wait_final(self, timeout: float | None = None) -> Receipt | None:
        """Block until the receipt is sealed (or ``timeout``); returns it."""
        with self._lock:
            if self.phase == FINAL:
                return self.receipt
            event = self._final_event
            if event is None:
                event = self._final_event = threading.Event()
        event.wait(timeout)
        return self.receipt

    async def wait_final_async(self) -> Receipt | None:
        """Wait, on whichever event loop runs this, until the receipt is sealed."""
        if self.phase != FINAL:
            await self._wait_async(closed=False)
        return self.receipt

    async def _wait_async(self, *, closed: bool) -> None:
        home = self._home
        if home is None or not home.here():
            from streamguard._engine.aio import current_home

            home = current_home()
        await home.wait(_core(self), closed=closed)

    def later_signals(self) -> list[str]:
        return list(self._later or ())
