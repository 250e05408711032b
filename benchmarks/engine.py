"""1. Engine overhead per unit: a bare generator against the same through the generic guards.

200k small strings through ``GuardedIterator`` (sync) and ``GuardedAsyncIterator`` (async),
each against the bare generator in the same run. The runtime has no stall timer (nothing armed)
and the OTel API has no providers; a second variant arms the stall timer to show that timers
cost nothing per chunk (they only look at ``t_last`` when they fire).

Goal: < 1 us added per unit.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from benchmarks import _common as c

UNITS = 200_000
GOAL_NS = 1000.0


def _gen(n: int) -> Iterator[str]:
    for _ in range(n):
        yield "tok"


async def _agen(n: int) -> AsyncIterator[str]:
    for _ in range(n):
        yield "tok"


def _noop() -> None:
    return None


def _sync_bare(n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in _gen(n):
        pass
    return (time.perf_counter_ns() - t0) / n


def _sync_guarded(n: int, rt: Any) -> float:
    from streamguard import GuardedIterator

    t0 = time.perf_counter_ns()
    for _ in GuardedIterator(_gen(n), close=_noop, runtime=rt):
        pass
    return (time.perf_counter_ns() - t0) / n


async def _async_bare(n: int) -> float:
    t0 = time.perf_counter_ns()
    async for _ in _agen(n):
        pass
    return (time.perf_counter_ns() - t0) / n


async def _async_guarded(n: int, rt: Any) -> float:
    from streamguard import GuardedAsyncIterator

    t0 = time.perf_counter_ns()
    async for _ in GuardedAsyncIterator(_agen(n), runtime=rt):
        pass
    return (time.perf_counter_ns() - t0) / n


def _runtimes() -> tuple[Any, Any]:
    return c.make_runtime(stall_timeout=None), c.make_runtime(stall_timeout=30.0)


def run() -> dict[str, Any]:
    c.setup_otel("noop")
    n = UNITS // 10 if c.QUICK else UNITS
    reps = 3 if c.QUICK else 7
    no_timers, timers = _runtimes()

    sync = c.interleave(
        {
            "bare": lambda: _sync_bare(n),
            "guarded": lambda: _sync_guarded(n, no_timers),
            "guarded_timers": lambda: _sync_guarded(n, timers),
        },
        reps,
    )

    loop = asyncio.new_event_loop()
    try:

        def on_loop(make: Callable[[], Any]) -> Callable[[], float]:
            return lambda: float(loop.run_until_complete(make()))

        aresults = c.interleave(
            {
                "bare": on_loop(lambda: _async_bare(n)),
                "guarded": on_loop(lambda: _async_guarded(n, no_timers)),
                "guarded_timers": on_loop(lambda: _async_guarded(n, timers)),
            },
            reps,
        )
    finally:
        loop.close()
    for rt in (no_timers, timers):
        rt.shutdown(timeout=1.0)

    figures = []
    for mode, res, base_name, cls in (
        ("sync", sync, "bare generator", "GuardedIterator"),
        ("async", aresults, "bare async generator", "GuardedAsyncIterator"),
    ):
        for key, label in (("guarded", "no timers"), ("guarded_timers", "stall timer armed")):
            fig = c.figure(
                f"engine.{mode}.{'timers' if key == 'guarded_timers' else 'plain'}",
                f"Engine, {mode}: {cls}, {label}",
                "ns/unit",
                baseline_name=base_name,
                baseline=res["bare"],
                name=f"{cls} ({label})",
                values=res[key],
                note=f"{n:,} units per run, OTel no-op API",
            )
            figures.append(c.goal(fig, "added", "<", GOAL_NS, "< 1 us added per unit"))
    # Timers cost nothing per chunk: armed vs not armed, same run.
    for mode, res in (("sync", sync), ("async", aresults)):
        figures.append(
            c.figure(
                f"engine.{mode}.timer_cost",
                f"Engine, {mode}: stall timer armed vs not armed",
                "ns/unit",
                baseline_name="guarded, no timers",
                baseline=res["guarded"],
                name="guarded, stall timer armed",
                values=res["guarded_timers"],
                note="ratio ~1.00 means the timer costs nothing per unit",
            )
        )
    return {"figures": figures}


def profile(ids: list[str]) -> dict[str, Any]:
    """Profile the guarded loops whose goal was missed (units: per-unit times)."""
    c.setup_otel("noop")
    n = 50_000 if c.QUICK else UNITS
    no_timers, timers = _runtimes()
    out: dict[str, Any] = {}
    from benchmarks._profile import profile as prof

    for fid in ids:
        rt = timers if fid.endswith(".timers") else no_timers
        if fid.startswith("engine.sync"):
            out[fid] = prof(functools.partial(_sync_guarded, n, rt), units=n)
        elif fid.startswith("engine.async"):
            out[fid] = prof(functools.partial(asyncio.run, _async_guarded(n, rt)), units=n)
    return out
