"""Stall, deadline and idle timers that cost nothing per chunk.

Drivers only write ``core.t_last`` and ``core.in_read`` as they go. A timer looks at those when
it fires and either stops the stream or re-arms itself for the new due time, so a busy stream
never touches the timer heap.

- Sync streams share one daemon thread holding a heap of due times (not a thread per stream).
- Async streams use their own loop's timers (``looptimers.LoopTimers``), so the stop runs on
  that loop, and loop lag does not count as a stall (see there).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore
    from streamguard._engine.looptimers import LagClock

__all__ = ["DETAIL", "Timers", "Watchdog", "evaluate"]


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
    core: StreamCore, now: int, lag: LagClock | None = None
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


DETAIL = {
    StopReason.DEADLINE_EXCEEDED: "the stream ran past its deadline",
    StopReason.UPSTREAM_IDLE: "no chunk from upstream within idle_timeout",
    StopReason.CONSUMER_STALLED: "the consumer took nothing within stall_timeout",
}


class Watchdog:
    """One daemon thread for every sync stream's timers."""

    def __init__(self) -> None:
        # Entries hold cores weakly: a finished stream is not kept alive until its due time.
        self._heap: list[tuple[int, int, weakref.ref[StreamCore]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def watch(self, core: StreamCore) -> None:
        _, due = evaluate(core, time.monotonic_ns())
        if due is None:
            return
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="streamguard-watchdog", daemon=True
                )
                self._thread.start()
            ref = weakref.ref(core)
            heapq.heappush(self._heap, (due, next(self._seq), ref))
            if self._heap[0][2] is ref:
                self._cond.notify()

    def _run(self) -> None:
        heap = self._heap
        while True:
            due_now: list[tuple[StreamCore, StopReason]] = []
            with self._cond:
                while not self._stopping:
                    now = time.monotonic_ns()
                    if heap and heap[0][0] <= now:
                        break
                    timeout = (heap[0][0] - now) / 1e9 if heap else None
                    self._cond.wait(timeout)
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
            # Stops run outside the lock: closing an upstream may take a while.
            for core, reason in due_now:
                core.request_stop(reason, DETAIL[reason])
            del due_now

    def stop(self) -> None:
        """End the thread and forget every stream (process shutdown, ``uninstrument()``)."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def __len__(self) -> int:
        return len(self._heap)
