"""3. Memory per open idle stream, measured with tracemalloc.

2000 ``GuardedIterator``s over generators that have not started, with the default timers armed
(stall 30 s: each stream sits in the watchdog's heap), against 2000 bare generators of the same
kind in the same run. Bytes per stream are what is still allocated while the streams are held,
divided by their number; the guard's cost is the difference.

Run twice by the driver: with the OTel no-op API, and with the SDK TracerProvider (a live,
not yet ended span per stream).

Goal: < 8 KB per stream.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from typing import Any

from benchmarks import _common as c

STREAMS = 2000
GOAL_BYTES = 8 * 1024


def _gen() -> Iterator[str]:
    yield "tok"


def _noop() -> None:
    return None


def _held_bytes(make: Any, n: int) -> float:
    """Bytes per item still allocated while ``n`` items made by ``make()`` are held."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    held = [make() for _ in range(n)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    per = (after - before) / n
    for item in held:
        close = getattr(item, "close", None)
        if close is not None:
            close()
    del held
    return per


def run() -> dict[str, Any]:
    from streamguard import GuardedIterator

    mode = c.OTEL_MODE
    c.setup_otel(mode, retain=False)
    n = 300 if c.QUICK else STREAMS
    reps = 2 if c.QUICK else 3
    rt = c.make_runtime(keep_receipts=False)  # default timers: stall 30 s, armed per stream
    c.install(rt)

    def guarded() -> Any:
        return GuardedIterator(_gen(), close=_noop, provider="openai", model="gpt-4o-mini")

    def sample(make: Any) -> Any:
        def measure() -> float:
            value = _held_bytes(make, n)
            c.clear_sinks(rt)
            return value

        return measure

    # The first receipt of a process loads the pricing tables: do it outside tracemalloc,
    # which would take many seconds to trace that.
    guarded().close()
    tracemalloc.start()
    try:
        res = c.interleave({"bare": sample(_gen), "guarded": sample(guarded)}, reps)
    finally:
        tracemalloc.stop()
    rt.shutdown(timeout=1.0)
    label = "OTel SDK TracerProvider (live span)" if mode == "sdk" else "OTel no-op API"
    fig = c.figure(
        f"memory.idle.{mode}",
        f"Memory per open idle stream, {label}",
        "bytes/stream",
        baseline_name="bare generator",
        baseline=res["bare"],
        name="GuardedIterator, not started, timers armed",
        values=res["guarded"],
        note=f"{n:,} streams held at once; tracemalloc",
    )
    return {"figures": [c.goal(fig, "added", "<", GOAL_BYTES, "< 8 KB per open idle stream")]}


def profile(ids: list[str]) -> dict[str, Any]:
    """Memory has no CPU profile: the allocation sites of one batch of guarded streams."""
    from benchmarks._profile import short_path
    from streamguard import GuardedIterator

    c.setup_otel(c.OTEL_MODE, retain=False)
    rt = c.make_runtime()
    c.install(rt)
    n = 500 if c.QUICK else STREAMS
    GuardedIterator(_gen(), close=_noop, provider="openai", model="gpt-4o-mini").close()
    tracemalloc.start(8)
    gc.collect()
    snap0 = tracemalloc.take_snapshot()
    held = [
        GuardedIterator(_gen(), close=_noop, provider="openai", model="gpt-4o-mini")
        for _ in range(n)
    ]
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    rows = []
    for stat in snap1.compare_to(snap0, "lineno")[:15]:
        frame = stat.traceback[0]
        rows.append(
            {
                "where": f"{short_path(frame.filename)}:{frame.lineno}",
                "bytes_per_stream": stat.size_diff / n,
                "count_per_stream": stat.count_diff / n,
            }
        )
    for g in held:
        g.close()
    rt.shutdown(timeout=1.0)
    return {fid: {"allocations": rows} for fid in ids}
