"""The stream state machine and its accounting: one per stream, shared by every driver.

Life of a stream::

    OPEN --first stop signal--> STOPPING --upstream closed--> CLOSED --receipt sealed--> FINAL

- The first stop signal wins (``request_stop`` returns True once); later ones are recorded
  and change nothing.
- The cutoff is the first stop: from then on the counters are frozen, and a unit that still
  arrives is counted as ``post_cutoff`` and never handed over.
- The upstream is closed exactly once, whoever stops the stream and from whichever thread;
  an async upstream is closed on its own event loop (its ``Home``: asyncio, uvloop or trio),
  where the stream's timer and the watch on its task are dropped too, so nothing on the loop
  keeps a finished stream.
- Exactly one receipt is sealed per stream, after the upstream is closed, on every path.

A core never references the object the application holds (the guard): the registry and the
watchdog keep cores alive, and a guard that nobody holds must still be collectable so that its
finaliser can close the upstream (PROVIDERS.md pitfall 12).
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.aio import Home
    from streamguard._engine.ports import Host
    from streamguard._receipts.model import Receipt

__all__ = ["HIDE", "NOT_A_UNIT", "StreamCore"]

#: Returned by a meter for a chunk that is passed through but is not model output.
NOT_A_UNIT = -1
#: Returned by a meter for a chunk the application must not see (an injected usage chunk).
HIDE = -2

OPEN, STOPPING, CLOSED, FINAL = 0, 1, 2, 3

_monotonic_ns = time.monotonic_ns
_time_ns = time.time_ns


class StreamCore:
    """State, counters and lifecycle of one stream. Thread-safe; never held by the SDK."""

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

    def __init__(
        self,
        runtime: Host,
        *,
        provider: str,
        model: str | None,
        operation: str = "chat",
        request_max_tokens: int | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
        stream_id: str | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
    ) -> None:
        self.runtime = runtime
        self.stream_id = stream_id or os.urandom(16).hex()
        self.provider = provider
        self.model = model
        self.operation = operation
        self.request_max_tokens = request_max_tokens
        self.attributes = dict(attributes or {})
        self.server_address = server_address
        self.server_port = server_port
        self._lock = threading.Lock()
        self.phase = OPEN
        self.stop_reason: StopReason | None = None
        self.stop_exc: BaseException | None = None  # what the consumer gets, set by checks
        self.detail: str | None = None
        self.error_type: str | None = None
        self.rejected = False
        self._later: list[str] = []
        # Units (chunks carrying model output) and the tokens they carry.
        self.produced = self.committed = self.consumed = self.post_cutoff = 0
        self.produced_tokens = self.committed_tokens = self.consumed_tokens = 0
        self.post_cutoff_tokens = 0
        self._pending: collections.deque[int] = collections.deque()  # committed, not consumed
        self.input_tokens: int | None = None
        self.cached_input_tokens: int | None = None  # of input_tokens, read from a cache
        self.usage_exact: int | None = None  # output tokens reported by the provider
        self.estimated_output_tokens: int | None = None  # the estimate usage replaced
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []
        self.t_started = _time_ns()
        self.t_started_mono = _monotonic_ns()
        self.t_first_chunk: int | None = None
        self.t_last = self.t_started_mono  # last hand-over (monotonic ns): the stall clock
        self.in_read = False  # inside an upstream read: the idle clock runs from t_last
        self.idle_clock = False  # an idle timer is armed: reads must stamp t_last
        self.t_stop_requested: int | None = None
        self.t_stop_mono: int | None = None
        self.t_upstream_closed: int | None = None
        self.t_upstream_closed_mono: int | None = None
        self._close: Callable[[], object] | None = None
        self._aclose: Callable[[], Awaitable[object]] | None = None
        self._abort: Callable[[], object] | None = None
        self._home: Home | None = None  # the event loop of an async upstream
        self._followed: tuple[Any, Any] | None = None  # (task iterating it, home's token)
        self.timer_entry: list[Any] | None = None  # this stream's entry in its loop's timers
        self._final_event = threading.Event()
        self._receipt_waiters: list[Callable[[], object]] = []
        self.receipt: Receipt | None = None
        self.span: Any = None
        self.checks: list[Callable[[StreamCore, Any, int], None]] | None = None
        self.async_checks: list[Any] | None = None  # policy runs with async checks
        self.text_of: Callable[[Any], str | None] | None = None  # set by the provider layer
        self.spend: Any = None  # budget accounts (streamguard._money.spend.Spend)
        self.policy_runs: list[Any] | None = None
        self.deadline: float | None = None  # per-request deadline (streamguard.limits)
        self.watch: Any = None
        # The application asking for the next unit marks the previous one consumed, unless an
        # integration counts consumption itself (the ASGI middleware: when bytes are sent).
        self.consume_on_next = True
        # The application asked for the next unit: everything handed over before is consumed.
        # Applied lazily in the next critical section (admit, produce, stop) to save a lock
        # per unit; logically it happened at the ask, before any later stop.
        self.consume_due = False
        runtime.stream_opened(self)

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

    # ------------------------------------------------------------------------ counters
    def admit(self, tokens: int, chunk: object = None) -> bool:
        """A unit arrived from upstream and is about to be handed over.

        Returns False, counting it as ``post_cutoff``, when the stream is already cut; the
        caller must then not hand it over. Checks (budget, policy, caps) run between produced
        and committed; a check that stops the stream keeps the unit from being handed over.
        """
        if self.checks is not None:
            return self.produce(tokens, chunk) and self.commit(tokens)
        # The hot path, with no checks: produced and committed in one critical section.
        with self._lock:
            if self.stop_reason is not None:
                self.post_cutoff += 1
                self.post_cutoff_tokens += tokens
                return False
            if self.consume_due:
                self._consume_due_locked()
            self.produced += 1
            self.produced_tokens += tokens
            self.committed += 1
            self.committed_tokens += tokens
            self._pending.append(tokens)
            now = _monotonic_ns()
            self.t_last = now
            if self.t_first_chunk is None:
                self.t_first_chunk = self.t_started + (now - self.t_started_mono)
        return True

    def produce(self, tokens: int, chunk: object = None) -> bool:
        """``admit``'s first half, for drivers that await checks in between; runs sync checks."""
        with self._lock:
            if self.stop_reason is not None:
                self.post_cutoff += 1
                self.post_cutoff_tokens += tokens
                return False
            if self.consume_due:
                self._consume_due_locked()
            self.produced += 1
            self.produced_tokens += tokens
            if self.t_first_chunk is None:
                self.t_first_chunk = _time_ns()
        if self.checks is not None:
            for check in self.checks:
                check(self, chunk, tokens)
        return self.stop_reason is None

    def commit(self, tokens: int) -> bool:
        """``admit``'s second half: hand the produced unit over unless the stream was cut."""
        with self._lock:
            if self.stop_reason is not None:
                return False
            self.committed += 1
            self.committed_tokens += tokens
            self._pending.append(tokens)
            self.t_last = _monotonic_ns()
        return True

    def _consume_due_locked(self) -> None:
        self.consume_due = False
        pending = self._pending
        while pending:
            self.consumed_tokens += pending.popleft()
            self.consumed += 1

    def consume(self, units: int = 1) -> int:
        """The consumer is done with up to ``units`` handed-over units; frozen after the cutoff."""
        done = 0
        with self._lock:
            if self.stop_reason is not None:
                return 0
            pending = self._pending
            while done < units and pending:
                self.consumed_tokens += pending.popleft()
                done += 1
            self.consumed += done
        return done

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def set_usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_input_tokens: int | None = None,
    ) -> None:
        """Provider-reported usage: replaces the estimate (the last report wins)."""
        with self._lock:
            if input_tokens is not None:
                self.input_tokens = input_tokens
            if cached_input_tokens is not None:
                self.cached_input_tokens = cached_input_tokens
            if output_tokens is not None:
                if self.usage_exact is None:
                    self.estimated_output_tokens = self.produced_tokens
                self.usage_exact = output_tokens

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
        self.runtime.unwatch(self)
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
            home.timers.cancel(self)
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
        self.runtime.finalize(self)

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
        await home.wait(self)
        return self.receipt

    def snapshot(self) -> dict[str, Any]:
        """The live counters (``stats``), consistent at one instant."""
        with self._lock:
            if self.consume_due and self.stop_reason is None:
                self._consume_due_locked()
            return {
                "stream_id": self.stream_id,
                "state": ("open", "stopping", "closed", "final")[self.phase],
                "reason": None if self.stop_reason is None else str(self.stop_reason),
                "produced": self.produced,
                "committed": self.committed,
                "consumed": self.consumed,
                "post_cutoff": self.post_cutoff,
                "produced_tokens": self.produced_tokens,
                "committed_tokens": self.committed_tokens,
                "consumed_tokens": self.consumed_tokens,
                "undelivered": self.produced - self.consumed,
            }

    def later_signals(self) -> list[str]:
        return list(self._later)
