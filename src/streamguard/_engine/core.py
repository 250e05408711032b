"""The stream state machine and its accounting: one per stream, shared by every driver.

Floor: ``_engine`` (imports only ``_engine`` modules; what plugs in is behind ``ports``).
This module holds the state and the per-unit counters, the only part on the per-chunk path;
how a stream stops, closes its upstream and waits for its receipt is its base ``Lifecycle``
(``lifecycle.py``), which also declares the slots.

Life of a stream::

    OPEN --first stop signal--> STOPPING --upstream closed--> CLOSED --receipt sealed--> FINAL

- The cutoff is the first stop: from then on the counters are frozen, and a unit that still
  arrives is counted as ``post_cutoff`` and never handed over.
- Exactly one receipt is sealed per stream, after the upstream is closed, on every path.

A core never references the object the application holds (the guard): the registry and the
watchdog keep cores alive, and a guard that nobody holds must still be collectable so that its
finaliser can close the upstream (PROVIDERS.md pitfall 12).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from streamguard._engine.lifecycle import CLOSED, FINAL, OPEN, STOPPING, Lifecycle
from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.aio import Home
    from streamguard._engine.looptimers import TimerEntry
    from streamguard._engine.ports import Host
    from streamguard._receipts.model import Receipt

__all__ = ["CLOSED", "FINAL", "HIDE", "NOT_A_UNIT", "OPEN", "STOPPING", "StreamCore"]

#: Returned by a meter for a chunk that is passed through but is not model output.
NOT_A_UNIT = -1
#: Returned by a meter for a chunk the application must not see (an injected usage chunk).
HIDE = -2


_monotonic_ns = time.monotonic_ns
_time_ns = time.time_ns
_ZERO = (0, 0, 0, 0)
#: The attributes of a stream that has none (most): one shared, read-only mapping, replaced by
#: a stream's own dict at its first attribute (``set_attributes``).
NO_ATTRIBUTES: Mapping[str, str | int | bool] = MappingProxyType({})

# A stream's lock is one of a fixed set, shared (striped) by many streams: a lock of its own was
# 88 bytes per open stream. Sharing is safe because no code holds a stream's lock while it takes
# any other lock (every ``with self._lock`` block here and in lifecycle.py only reads and sets
# this stream's fields), and cheap because each is held for a few field stores. A forked child
# gets a new set (one could be held by a parent thread at the fork); the parent's streams it
# inherits get locks of their own there (``_forking.disown``).
_LOCK_STRIPES = 64
_locks: tuple[threading.Lock, ...] = ()


def _new_locks() -> None:
    global _locks
    _locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))


_new_locks()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks)


class StreamCore(Lifecycle):
    """State, counters and lifecycle of one stream. Thread-safe; never held by the SDK."""

    __slots__ = ()  # every slot is declared on Lifecycle, the base

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
        self.attributes = dict(attributes) if attributes else NO_ATTRIBUTES
        self.server_address = server_address
        self.server_port = server_port
        self._lock = _locks[(id(self) >> 4) % _LOCK_STRIPES]
        self.phase = OPEN
        self.stop_reason: StopReason | None = None
        self.stop_exc: BaseException | None = None  # what the consumer gets, set by checks
        self.detail: str | None = None
        self.error_type: str | None = None
        self.rejected = False
        self._later: list[str] | None = None  # later stop signals, made by the first
        # Units (chunks carrying model output) and the tokens they carry; see "Counters" below.
        self._n = _ZERO  # (produced, produced_tokens, committed, committed_tokens)
        self._asked = _ZERO  # ``_n`` when the application last asked for a unit
        self._frozen: tuple[int, int, int, int] | None = None  # ``_n`` at the cutoff
        self._frozen_asked = _ZERO
        self._ext_consumed = self._ext_consumed_tokens = 0  # counted by ``consume``
        self.post_cutoff = self.post_cutoff_tokens = 0
        # Committed, not consumed, when ``consume`` counts consumption (made at the first unit:
        # an empty deque is 600 bytes, and a stream consumed on the next ask never needs one).
        self._pending: collections.deque[int] | None = None
        self.input_tokens: int | None = None
        self.cached_input_tokens: int | None = None  # of input_tokens, read from a cache
        self.usage_exact: int | None = None  # output tokens reported by the provider
        self.estimated_output_tokens: int | None = None  # the estimate usage replaced
        self.response_id: str | None = None
        self.response_model: str | None = None
        self._finish_reasons: list[str] | None = None  # see finish_reasons
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
        self.timer_entry: TimerEntry | None = None  # this stream's entry in its loop's timers
        self._final_event: threading.Event | None = None  # made by the first wait_final
        self._receipt_waiters: list[Callable[[], object]] | None = None
        self._closed_waiters: list[Callable[[], object]] | None = None
        self.receipt: Receipt | None = None
        self.span: Any = None
        self.checks: list[Callable[[StreamCore, Any, int], None]] | None = None
        self.async_checks: list[Any] | None = None  # policy runs with async checks
        self.text_of: Callable[[Any], str | None] | None = None  # set by the provider layer
        self.spend: Any = None  # budget accounts (streamguard._money.spend.Spend)
        self.policy_runs: list[Any] | None = None
        self.deadline: float | None = None  # per-request deadline (streamguard.limits)
        self.watch: Any = None
        # The application asking for the next unit marks the previous one consumed (the driver
        # stores ``_n`` in ``_asked``), unless consumption is counted by ``consume``: the ASGI
        # middleware (when bytes are sent) and StreamSession (acknowledgements) say False here
        # before the first unit.
        self.consume_on_next = True
        runtime.stream_opened(self)

    @property
    def finish_reasons(self) -> list[str]:
        """The finish reasons the provider reported (meters append; made at the first: most
        streams report one, at their end, and an open stream need not hold an empty list)."""
        reasons = self._finish_reasons
        if reasons is None:
            reasons = self._finish_reasons = []
        return reasons

    @finish_reasons.setter
    def finish_reasons(self, reasons: list[str]) -> None:
        self._finish_reasons = reasons

    def set_attributes(self, items: Mapping[str, str | int | bool]) -> None:
        """Add or replace receipt attributes (the stream's own dict is made by the first)."""
        if not items:
            return
        attributes = self.attributes
        if attributes is NO_ATTRIBUTES:
            with self._lock:  # two first writers from two threads: both kept
                if self.attributes is NO_ATTRIBUTES:
                    self.attributes = {}
                attributes = self.attributes
        cast("dict[str, str | int | bool]", attributes).update(items)

    # ------------------------------------------------------------------------ counters
    # One consumer reads a stream at a time, so the per-unit path takes no lock: the driver is
    # the only writer of ``_n``, and replaces the whole tuple in one store, which no thread can
    # see half-done. A stop from any thread sets ``stop_reason`` first and then, under the
    # lock, freezes ``_n`` (``_freeze``); a unit checks ``stop_reason`` again after its store.
    # Under the GIL one of the two sees the other: either the freeze holds the unit (it was
    # committed before the cutoff and is handed over) or the unit sees the stop and waits on
    # the lock for the freeze, then counts itself ``post_cutoff`` if the freeze missed it.
    # Every reader reads the frozen tuple once there is one: the counters never move after
    # the cutoff, whatever a racing unit stores.

    def admit(self, tokens: int, chunk: object = None) -> bool:
        """A unit arrived from upstream and is about to be handed over.

        Returns False, counting it as ``post_cutoff``, when the stream is already cut; the
        caller must then not hand it over. Checks (budget, policy, caps) run between produced
        and committed; a check that stops the stream keeps the unit from being handed over.
        """
        if self.checks is not None:
            return self.produce(tokens, chunk) and self.commit(tokens)
        if self.stop_reason is not None:
            return self._cut(None, tokens)
        p, pt, c, ct = self._n
        n = self._n = (p + 1, pt + tokens, c + 1, ct + tokens)
        if not self.consume_on_next:
            self._hold(tokens)
        self.t_last = now = _monotonic_ns()
        if self.t_first_chunk is None:
            self.t_first_chunk = self.t_started + (now - self.t_started_mono)
        if self.stop_reason is not None:  # a stop from another thread raced with this unit
            return self._cut(n, tokens)
        return True

    def _cut(self, n: tuple[int, int, int, int] | None, tokens: int) -> bool:
        """A unit met a stop: handed over only if the cutoff's freeze counted it (``n``)."""
        with self._lock:  # the stopper holds it until the freeze is complete
            if n is not None and self._frozen is n:
                return True
            self.post_cutoff += 1
            self.post_cutoff_tokens += tokens
        return False

    def produce(self, tokens: int, chunk: object = None) -> bool:
        """``admit``'s first half, for drivers that await checks in between; runs sync checks."""
        with self._lock:
            if self.stop_reason is not None:
                self.post_cutoff += 1
                self.post_cutoff_tokens += tokens
                return False
            p, pt, c, ct = self._n
            self._n = (p + 1, pt + tokens, c, ct)
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
            p, pt, c, ct = self._n
            self._n = (p, pt, c + 1, ct + tokens)
            if not self.consume_on_next:
                self._hold(tokens)
            self.t_last = _monotonic_ns()
        return True

    def _hold(self, tokens: int) -> None:
        """A unit handed over waits in ``_pending`` for ``consume`` (by its one writer)."""
        pending = self._pending
        if pending is None:
            pending = self._pending = collections.deque()
        pending.append(tokens)

    def consume(self, units: int = 1) -> int:
        """The consumer is done with up to ``units`` handed-over units; frozen after the cutoff.

        For streams whose consumption is not the next ask (``consume_on_next`` False)."""
        done = tokens = 0
        with self._lock:
            if self.stop_reason is not None:
                return 0
            pending = self._pending
            while done < units and pending:
                tokens += pending.popleft()
                done += 1
            self._ext_consumed += done
            self._ext_consumed_tokens += tokens
        return done

    def _freeze(self) -> None:
        """The cutoff (under the lock, after ``stop_reason`` is set): the counters stop here.
        ``_asked`` is read before ``_n``, so what is frozen as consumed is never ahead of it."""
        self._frozen_asked = self._asked
        self._frozen = self._n

    @property
    def counts(self) -> tuple[int, int, int, int]:
        """(produced, produced_tokens, committed, committed_tokens), as one consistent read."""
        return self._frozen or self._n

    @property
    def produced(self) -> int:
        return (self._frozen or self._n)[0]

    @property
    def produced_tokens(self) -> int:
        return (self._frozen or self._n)[1]

    @property
    def committed(self) -> int:
        return (self._frozen or self._n)[2]

    @property
    def committed_tokens(self) -> int:
        return (self._frozen or self._n)[3]

    @property
    def consumed(self) -> int:
        asked = self._asked if self._frozen is None else self._frozen_asked
        return asked[2] + self._ext_consumed

    @property
    def consumed_tokens(self) -> int:
        asked = self._asked if self._frozen is None else self._frozen_asked
        return asked[3] + self._ext_consumed_tokens

    @property
    def inflight(self) -> int:
        """Units handed over and not consumed yet."""
        return self.committed - self.consumed

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

    def snapshot(self) -> dict[str, Any]:
        """The live counters (``stats``), consistent at one instant."""
        with self._lock:
            produced, produced_tokens, committed, committed_tokens = self.counts
            consumed = self.consumed
            return {
                "stream_id": self.stream_id,
                "state": ("open", "stopping", "closed", "final")[self.phase],
                "reason": None if self.stop_reason is None else str(self.stop_reason),
                "produced": produced,
                "committed": committed,
                "consumed": consumed,
                "post_cutoff": self.post_cutoff,
                "produced_tokens": produced_tokens,
                "committed_tokens": committed_tokens,
                "consumed_tokens": self.consumed_tokens,
                "undelivered": produced - consumed,
            }
