"""The stall, idle and deadline timers of one event loop's streams, and how late the loop runs.

One heap of due times per loop and one alarm (``Home.set_alarm``) for its earliest entry, so
that a busy stream never touches the timer heap (a due entry looks at ``core.t_last`` and
re-arms itself) and a finished stream leaves nothing behind: ``cancel`` drops its entry at
once, and dropped entries are swept out when they are the majority.

Loop lag is not a stall. A stall means the consumer stopped asking; a consumer that is ready
to ask but is not scheduled because the loop is late (5,000 streams on a loaded machine, a
blocking call, a long GC pause) has not stalled. So the alarm doubles as a lag probe: while any
stream is watched it fires at least every ``TICK``, and each time it records how late it fired.
The lateness summed over an interval is loop time in which nobody on the loop could act; the
stall and idle clocks leave it out (the deadline, a wall-clock limit, does not). A consumer
that really stops is cut once the loop has run promptly for ``stall_timeout`` since its last
ask: at once on an idle loop, later (by the lag) on a late one, never early.

A loop that does not run at all (stopped between ``run_until_complete`` calls, closed, its
thread gone) is not late: its alarm cannot fire, and the watchdog thread cuts its stalled
streams instead, forgiving only the lag recorded while the loop still ran (``watchdog``).

A probe up to ``SLACK`` late is not lag but the timer's granularity (asyncio rounds a poll's
timeout up to the millisecond; a busy machine adds scheduling noise). Counting it would let many
streams, whose alarms fire every millisecond or so, add up a lag nearly equal to the time passed,
and a consumer that really stopped would be cut many times too late, or never.
"""

from __future__ import annotations

import bisect
import heapq
import time
from typing import TYPE_CHECKING

from streamguard._engine import ports
from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.aio import Home
    from streamguard._engine.core import StreamCore

__all__ = ["TICK_NS", "LagClock", "LoopTimers"]

TICK_NS = 250_000_000  # the lag probe's period while streams are watched
SLACK_NS = 5_000_000  # lateness of a probe that is the timer's granularity, not loop lag
#: Private knob (tests and benchmarks): False makes new loops' timers ignore loop lag.
_LAG_COMPENSATION = True
BUCKET_NS = TICK_NS // 2  # loop lag is kept per bucket of this length
_MAX_SAMPLES = 8192  # buckets: ~17 minutes of lagged time; older lag is not forgiven
_monotonic_ns = time.monotonic_ns


class LagClock:
    """How late one loop ran: ``lag(t0, t1)`` is the loop lag (ns) between two instants.

    A probe due at ``due`` that fires at ``now`` shows that nobody on the loop could act from
    ``due + SLACK`` to ``now``: that interval is lag, and only that one (a probe on time adds
    nothing). Lag is kept per time bucket of half a ``TICK`` (bucket index, its lag, the total
    through its end), so memory stays bounded at one entry per half ``TICK`` of lagged time.
    Within a bucket its lag is assumed to come last, which forgives a consumer at most one
    bucket (125 ms) more than the loop really lost, never more: lag is never carried past the
    bucket it happened in, however many probes come after it.
    """

    __slots__ = ("_bucket", "_in_bucket", "_pending_due", "_recorded_to", "_total")

    def __init__(self) -> None:
        self._bucket: list[int] = []  # bucket index (t // BUCKET_NS), increasing
        self._in_bucket: list[int] = []  # lag within that bucket (<= BUCKET_NS)
        self._total: list[int] = []  # lag through the end of that bucket
        self._recorded_to = 0  # lag is recorded up to this instant
        self._pending_due: int | None = None  # when the probe should fire next

    def expect(self, due: int | None) -> None:
        """The probe (the loop's alarm) is due at ``due``."""
        self._pending_due = due

    def fired(self, now: int, due: int) -> None:
        """The probe due at ``due`` ran at ``now``."""
        self._pending_due = None
        start = max(due + SLACK_NS, self._recorded_to)
        if now <= start:
            return
        self._recorded_to = now
        buckets, in_bucket, total = self._bucket, self._in_bucket, self._total
        so_far = total[-1] if total else 0
        b = start // BUCKET_NS
        while start < now:
            end = min(now, (b + 1) * BUCKET_NS)
            so_far += end - start
            if buckets and buckets[-1] == b:
                in_bucket[-1] += end - start
                total[-1] = so_far
            else:
                buckets.append(b)
                in_bucket.append(end - start)
                total.append(so_far)
            start, b = end, b + 1
        if len(buckets) > 2 * _MAX_SAMPLES:
            del buckets[:_MAX_SAMPLES], in_bucket[:_MAX_SAMPLES], total[:_MAX_SAMPLES]

    def total_at(self, t: int) -> int:
        """Lag accumulated up to instant ``t`` (not later than now), from an arbitrary origin."""
        buckets = self._bucket
        b = t // BUCKET_NS
        i = bisect.bisect_right(buckets, b) - 1
        if i < 0:
            so_far = self._total[0] - self._in_bucket[0] if buckets else 0
        elif buckets[i] < b:
            so_far = self._total[i]
        else:  # t is in bucket i, whose lag came last: [its end - its lag, its end]
            lag = self._in_bucket[i]
            before = t - ((b + 1) * BUCKET_NS - lag)
            so_far = self._total[i] - lag + min(lag, max(0, before))
        # After what is recorded: the pending probe, if overdue at t, was late by t - due.
        due = self._pending_due
        if due is not None:
            so_far += max(0, t - max(due + SLACK_NS, self._recorded_to))
        return so_far

    def lag(self, t0: int, now: int) -> int:
        """Loop lag between ``t0`` and ``now``."""
        if t0 >= now:
            return 0
        return max(0, self.total_at(now) - self.total_at(t0))

    def reset(self) -> None:
        self._bucket.clear()
        self._in_bucket.clear()
        self._total.clear()
        self._recorded_to = 0
        self._pending_due = None


class TimerEntry:
    """One stream's place in its loop's timer heap: ``core`` is None once dropped. Ordered by
    ``due`` alone (ties in any order): 48 bytes, where a ``[due, seq, core]`` list and its
    sequence number were about 110, per open stream."""

    __slots__ = ("core", "due")

    def __init__(self, due: int, core: StreamCore | None) -> None:
        self.due = due
        self.core = core

    def __lt__(self, other: TimerEntry) -> bool:
        return self.due < other.due


class LoopTimers:
    """The timers of one loop's streams. Every method runs on that loop."""

    __slots__ = ("_alarm_due", "_dead", "_forgive", "_heap", "home", "lag")

    def __init__(self, home: Home) -> None:
        self.home = home
        self._heap: list[TimerEntry] = []
        self._dead = 0
        self._alarm_due: int | None = None
        self.lag = LagClock()
        # What the stall and idle clocks forgive; None (``_LAG_COMPENSATION`` off, tests and
        # benchmarks only) is the old rule: every nanosecond since the last ask counts.
        self._forgive: LagClock | None = self.lag if _LAG_COMPENSATION else None

    def __len__(self) -> int:
        """Streams watched (dropped entries excluded)."""
        return len(self._heap) - self._dead

    def entries(self) -> list[TimerEntry]:
        """The heap's entries (``core`` None: dropped; the watchdog copies it: a loop that is
        not running does not touch it)."""
        return self._heap

    def arm(self, core: StreamCore) -> None:
        """Start watching ``core`` (its ``watch`` limits are set)."""
        from streamguard._engine.watchdog import evaluate

        now = _monotonic_ns()
        _, due = evaluate(core, now, self._forgive)
        if due is None:
            return
        if core.timer_entry is not None:  # armed again: the old entry is dropped
            core.timer_entry.core = None
            self._dead += 1
        self._push(core, due)
        self._schedule(now)

    def cancel(self, core: StreamCore) -> None:
        """Stop watching ``core``: nothing of it stays in the heap."""
        entry = core.timer_entry
        if entry is None:
            return
        core.timer_entry = None
        entry.core = None
        self._dead += 1
        if self._dead == len(self._heap):  # nothing left: no alarm, no lag probe
            self._heap.clear()
            self._dead = 0
            self._set_alarm(None, _monotonic_ns())
            self.lag.reset()
        elif self._dead > 64 and 2 * self._dead > len(self._heap):
            self._heap = [e for e in self._heap if e.core is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def _push(self, core: StreamCore, due: int) -> None:
        entry = TimerEntry(due, core)
        core.timer_entry = entry
        heapq.heappush(self._heap, entry)

    def fire(self) -> None:
        """The alarm: record the loop's lateness, then stop or re-arm every due stream."""
        from streamguard._engine.watchdog import DETAIL, evaluate

        now = _monotonic_ns()
        due_alarm, self._alarm_due = self._alarm_due, None
        if due_alarm is not None:
            self.lag.fired(now, due_alarm)
        heap = self._heap
        stops: list[tuple[StreamCore, StopReason]] = []
        try:
            while heap and heap[0].due <= now:
                core = heapq.heappop(heap).core
                if core is None:
                    self._dead -= 1
                    continue
                core.timer_entry = None
                try:
                    reason, due = evaluate(core, now, self._forgive)
                except Exception as exc:  # this stream's timers are lost; never the others'
                    ports.report_fault("timers.evaluate", exc)
                    continue
                if reason is not None:
                    stops.append((core, reason))
                elif due is not None:
                    self._push(core, due)
        finally:
            # Whatever happened above, the alarm is set again for the streams still watched:
            # a lost alarm would leave every stream of this loop without its timers.
            self._schedule(now)
        for core, reason in stops:
            try:
                core.request_stop(reason, DETAIL[reason])
            except Exception as exc:  # one stream's stop failing must not skip the others'
                ports.report_fault("timers.stop", exc)

    def _schedule(self, now: int) -> None:
        heap = self._heap
        while heap and heap[0].core is None:
            heapq.heappop(heap)
            self._dead -= 1
        if not heap:
            self._set_alarm(None, now)
            self.lag.reset()
            return
        # The earliest due stream, or the next lag probe if that comes first.
        due = min(heap[0].due, now + TICK_NS)
        if self._alarm_due is not None and self._alarm_due <= due:
            return
        self._set_alarm(due, now)

    def _set_alarm(self, due: int | None, now: int) -> None:
        self._alarm_due = due
        self.lag.expect(due)
        self.home.set_alarm(None if due is None else max(0, due - now) / 1e9)
