"""Stall, deadline and idle timers that cost nothing per chunk.

Drivers only write ``core.t_last`` and ``core.in_read`` as they go. A timer looks at those when
it fires and either stops the stream or re-arms itself for the new due time, so a busy stream
never touches the timer heap.

- Sync streams share one daemon thread holding a heap of due times (not a thread per stream).
- Async streams use their own loop's timers (``looptimers.LoopTimers``), so the stop runs on
  that loop, and loop lag does not count as a stall (see there).
- A loop's timers cannot fire while the loop does not run: stopped between
  ``run_until_complete`` calls (a sync bridge such as pydantic-ai's ``run_stream_sync``, after
  the caller broke out and kept the result), closed, or its thread gone. So the same thread
  also looks at every loop with watched streams each ``HOME_TICK``; a stream of a loop that is
  not running is stalled once ``stall_timeout`` has passed in wall time (lag is forgiven only
  up to when the loop was last seen running), and is stopped and sealed from this thread
  (``Lifecycle._close_upstream``: the socket is shut down, the receipt does not wait for the
  loop). A loop that runs, however late, is left to its own timers.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from streamguard._engine.phases import FINAL, STOPPING
from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.aio import Home
    from streamguard._engine.core import StreamCore


class Lag(Protocol):
    """How late a loop ran between two instants (``looptimers.LagClock``)."""

    def lag(self, t0: int, now: int) -> int: ...


__all__ = ["DETAIL", "HOME_TICK_NS", "Timers", "Watchdog", "evaluate", "evaluate_off_loop"]

#: How often the watchdog looks at the loops of async streams (whether they still run).
HOME_TICK_NS = 250_000_000


@dataclass(frozen=True, slots=True)
class Timers:
    """Per-stream limits in nanoseconds; ``None`` is off."""

    stall_ns: int | None
    deadline_ns: int | None
    idle_ns: int | None

    @classmethod
    def of(cls, stall: float | None, deadline: float | None, idle: float | None) -> Timers | None:
        if stall is None and deadline is None and idle is None:
            return None
        return cls(_ns(stall), _ns(deadline), _ns(idle))


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def evaluate(
    core: StreamCore, now: int, lag: Lag | None = None
) -> tuple[StopReason | None, int | None]:
    """Return (reason to stop now, or None; next monotonic due time, or None if done).

    With the ``lag`` of the stream's event loop, the stall and idle clocks leave out the time
    the loop ran late: waiting for the loop is neither the consumer's stall nor the upstream's
    silence. The deadline is wall-clock time.
    """
    timers: Timers | None = core.watch
    if timers is None or core.stop_reason is not None:
        return None, None
    due: list[int] = []
    if timers.deadline_ns is not None:
        at = core.t_started_mono + timers.deadline_ns
        if now >= at:
            return StopReason.DEADLINE_EXCEEDED, None
        due.append(at)
    last = core.t_last
    # Only one of the stall and idle clocks runs at a time; the other is re-checked after
    # its own timeout, by when the stream may have switched between reading and waiting.
    if core.in_read:
        running, other, reason = timers.idle_ns, timers.stall_ns, StopReason.UPSTREAM_IDLE
    else:
        running, other, reason = timers.stall_ns, timers.idle_ns, StopReason.CONSUMER_STALLED
    if running is not None:
        at = last + running
        if lag is not None and now >= at:
            at += lag.lag(last, now)
        if now >= at:
            return reason, None
        due.append(at)
    if other is not None:
        due.append(now + other)
    return None, (min(due) if due else None)


class _LagUntil:
    """A loop's lag, forgiven only up to ``until`` (when the loop was last seen running)."""

    __slots__ = ("clock", "until")

    def __init__(self, clock: Lag, until: int) -> None:
        self.clock, self.until = clock, until

    def lag(self, t0: int, now: int) -> int:
        end = min(now, self.until)
        if t0 >= end:
            return 0
        try:
            return self.clock.lag(t0, end)
        except (IndexError, ValueError):  # the loop started again and is trimming its samples
            return 0


def evaluate_off_loop(core: StreamCore, now: int, lag: Lag, seen_running: int) -> StopReason | None:
    """The reason to stop ``core`` now, for a stream whose event loop is not running.

    Nobody on that loop can ask for the next unit, so whichever clock runs (the read in
    progress was left too), the time since the last hand-over is the consumer's: stalled once
    ``stall_timeout`` passed since then, leaving out only the lag recorded while the loop
    still ran. Without a stall timeout, the deadline and idle timeout apply as usual.
    """
    timers: Timers | None = core.watch
    if timers is None or core.stop_reason is not None:
        return None
    if timers.deadline_ns is not None and now >= core.t_started_mono + timers.deadline_ns:
        return StopReason.DEADLINE_EXCEEDED
    forgive = _LagUntil(lag, seen_running)
    if timers.stall_ns is not None:
        last = core.t_last
        if now >= last + timers.stall_ns + forgive.lag(last, now):
            return StopReason.CONSUMER_STALLED
        return None
    return evaluate(core, now, forgive)[0]


DETAIL = {
    StopReason.DEADLINE_EXCEEDED: "the stream ran past its deadline",
    StopReason.UPSTREAM_IDLE: "no chunk from upstream within idle_timeout",
    StopReason.CONSUMER_STALLED: "the consumer took nothing within stall_timeout",
}


class Watchdog:
    """One daemon thread for every sync stream's timers, and for async streams off their loop."""

    def __init__(self) -> None:
        # Entries hold cores weakly: a finished stream is not kept alive until its due time.
        self._heap: list[tuple[int, int, weakref.ref[StreamCore]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # The loops (homes) with watched async streams -> when each was last seen running.
        self._homes: dict[Home, int] = {}
        self._next_probe: int | None = None

    def watch(self, core: StreamCore) -> None:
        _, due = evaluate(core, time.monotonic_ns())
        if due is None:
            return
        with self._cond:
            self._start_locked()
            ref = weakref.ref(core)
            heapq.heappush(self._heap, (due, next(self._seq), ref))
            if self._heap[0][2] is ref:
                self._cond.notify()

    def watch_home(self, home: Home) -> None:
        """Look at ``home``'s loop every ``HOME_TICK`` while it has watched streams.

        Called on that loop (so it runs now) after a stream was armed on its timers.
        """
        with self._cond:
            now = time.monotonic_ns()
            self._homes[home] = now
            if self._next_probe is None:
                self._next_probe = now + HOME_TICK_NS
                self._start_locked()
                self._cond.notify()

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="streamguard-watchdog", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        heap = self._heap
        while True:
            due_now: list[tuple[StreamCore, StopReason]] = []
            homes: list[tuple[Home, int]] = []
            with self._cond:
                while not self._stopping:
                    now = time.monotonic_ns()
                    dues = [heap[0][0]] if heap else []
                    if self._next_probe is not None:
                        dues.append(self._next_probe)
                    if dues and min(dues) <= now:
                        break
                    self._cond.wait((min(dues) - now) / 1e9 if dues else None)
                if self._stopping:
                    return
                now = time.monotonic_ns()
                while heap and heap[0][0] <= now:
                    ref = heapq.heappop(heap)[2]
                    core = ref()
                    if core is None:
                        continue
                    reason, due = evaluate(core, now)
                    if reason is not None:
                        due_now.append((core, reason))
                    elif due is not None:
                        heapq.heappush(heap, (due, next(self._seq), ref))
                    del core
                if self._next_probe is not None and self._next_probe <= now:
                    homes = list(self._homes.items())
                    self._next_probe = now + HOME_TICK_NS  # set again by the probe
            # Stops run outside the lock: closing an upstream may take a while.
            for core, reason in due_now:
                core.request_stop(reason, DETAIL[reason])
            del due_now
            if homes:
                self._probe(homes)
            del homes

    def _probe(self, homes: list[tuple[Home, int]]) -> None:
        """Every loop with watched streams: running (seen now), or stop and seal its stalled
        streams from here, since its own timers cannot fire."""
        now = time.monotonic_ns()
        seen: dict[Home, int] = {}
        gone: list[Home] = []
        for home, seen_running in homes:
            try:
                if home.running():
                    seen[home] = now
                    if not len(home.timers):
                        gone.append(home)
                    continue
                if not _stop_off_loop(home, now, seen_running):
                    gone.append(home)  # nothing left to watch there until it arms again
            except Exception as exc:  # never let one loop end the thread (G7)
                from streamguard._engine import ports

                ports.report_fault("watchdog.probe", exc)
        with self._cond:
            for home, when in seen.items():
                if home in self._homes:
                    self._homes[home] = max(self._homes[home], when)
            for home in gone:
                # A stream armed there since this probe began re-stamped it (watch_home): kept.
                if self._homes.get(home, now + 1) <= now:
                    del self._homes[home]
            if not self._stopping:
                self._next_probe = now + HOME_TICK_NS if self._homes else None

    def stop(self) -> None:
        """End the thread and forget every stream (process shutdown, ``uninstrument()``)."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._homes.clear()
            self._next_probe = None
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def __len__(self) -> int:
        return len(self._heap)


def _stop_off_loop(home: Home, now: int, seen_running: int) -> bool:
    """Stop the stalled streams of a loop that is not running, and seal the stopped ones.

    Returns whether any stream there is still open (worth looking at again).
    """
    timers = home.timers
    open_left = False
    # A copy: the loop may start again meanwhile (it then owns its heap; stopping and sealing
    # a core are thread-safe, and a core it stops first makes ours a no-op).
    for entry in list(timers.entries()):
        core = entry.core
        if core is None or core.phase == FINAL:
            continue
        if core.stop_reason is None:
            reason = evaluate_off_loop(core, now, timers.lag, seen_running)
            if reason is None:
                open_left = True
                continue
            core.request_stop(reason, f"{DETAIL[reason]} (its event loop was not running)")
        if core.phase == STOPPING and not home.running():
            core._closed()  # stopped by anyone while the loop is off: its aclose cannot run
    return open_left
