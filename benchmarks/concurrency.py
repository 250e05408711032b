"""6. Many concurrent async guarded streams in one process, against the same run unguarded.

A. Over the network: N concurrent openai ``AsyncOpenAI`` chat streams (N = 1000, one shared
   client with a connection limit of 2000) against ``streamguard.testing.Upstream`` in its own
   process, each 20 tokens at 10 ms. Throughput (chunks/s, streams/s), the client process's CPU
   time per chunk, and peak Python memory (tracemalloc, in separate runs since tracing slows
   the client). Guarded with ``streamguard.guard(stream)``, alternating run by run with the
   bare SDK. If the upstream (uvicorn, one process) cannot serve N streams reliably, N is
   halved until it can, and the results say so.
B. In memory: 10,000 concurrent ``GuardedAsyncIterator``s over async generators (20 units each,
   yielding to the loop between units) against the bare generators: throughput and peak memory
   per stream, and the memory still held once every stream has ended.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from benchmarks import _common as c
from benchmarks._upstream_proc import RemoteUpstream

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "Count to twenty."}]
TOKENS = 20
INTERVAL = 0.010


# ----------------------------------------------------------------------- A: network
async def _net_stream(client: Any, guarded: bool) -> int:
    import streamguard

    raw = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=TOKENS, stream=True
    )
    stream = streamguard.guard(raw, model=MODEL) if guarded else raw
    n = 0
    async for _ in stream:
        n += 1
    return n


async def _net_run(client: Any, up: RemoteUpstream, n: int, guarded: bool) -> dict[str, Any]:
    from streamguard._runtime import get_runtime

    sink = get_runtime().sinks[0]
    up.reset()
    gc.collect()
    receipts0 = len(sink)
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(
        *(_net_stream(client, guarded) for _ in range(n)), return_exceptions=True
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    chunks = sum(r for r in results if isinstance(r, int))
    errors = [repr(r) for r in results if not isinstance(r, int)]
    records = up.records(timeout=30.0)
    completed = sum(1 for r in records if r["outcome"] == "completed")
    receipts = len(sink) - receipts0
    return {
        "receipts": receipts,
        "wall_s": wall,
        "cpu_s": cpu,
        "chunks": chunks,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "upstream_completed": completed,
        "ok": not errors and completed == n and receipts == (n if guarded else 0),
    }


async def _net_peak(client: Any, up: RemoteUpstream, n: int, guarded: bool) -> float:
    """Peak traced bytes above the starting point during one run, per stream."""
    up.reset()
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        await asyncio.gather(*(_net_stream(client, guarded) for _ in range(n)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    up.records(timeout=30.0)
    return (peak - start) / n


def _network(reps: int, target: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import httpx2
    import openai

    info: dict[str, Any] = {"target_streams": target, "tried": []}

    async def main() -> list[dict[str, Any]]:
        client = openai.AsyncOpenAI(
            base_url=up.openai_base_url,
            api_key="k",
            max_retries=0,
            http_client=httpx2.AsyncClient(
                limits=httpx2.Limits(max_connections=2000, max_keepalive_connections=2000),
                timeout=httpx2.Timeout(60.0),
            ),
        )
        try:
            await _net_run(client, up, 8, True)  # warm-up: imports, pricing tables
            n = target
            while True:
                probe = await _net_run(client, up, n, False)
                info["tried"].append({"streams": n, **probe})
                if probe["ok"] or n <= 50:
                    break
                n //= 2
            info["streams"] = n
            runs: dict[str, list[dict[str, Any]]] = {"bare": [], "guarded": []}
            for rep in range(reps):
                for guarded in (True, False) if rep % 2 else (False, True):
                    runs["guarded" if guarded else "bare"].append(
                        await _net_run(client, up, n, guarded)
                    )
            peaks: dict[str, list[float]] = {"bare": [], "guarded": []}
            for rep in range(max(1, reps // 2)):
                for guarded in (True, False) if rep % 2 else (False, True):
                    peaks["guarded" if guarded else "bare"].append(
                        await _net_peak(client, up, n, guarded)
                    )
            return _net_figures(n, runs, peaks, info)
        finally:
            await client.close()

    with RemoteUpstream(token_interval=INTERVAL, default_max_tokens=TOKENS) as up:
        figures = asyncio.run(main())
    return figures, info


def _cpu_per_chunk(run: dict[str, Any]) -> float:
    return float(run["cpu_s"] / run["chunks"] * 1e6)


def _net_figures(
    n: int,
    runs: dict[str, list[dict[str, Any]]],
    peaks: dict[str, list[float]],
    info: dict[str, Any],
) -> list[dict[str, Any]]:
    def series(side: str, fn: Callable[[dict[str, Any]], float]) -> list[float]:
        return [fn(r) for r in runs[side]]

    info["failed_runs"] = {side: sum(1 for r in runs[side] if not r["ok"]) for side in runs}
    note = f"{n} concurrent streams x {TOKENS} tokens at {INTERVAL * 1000:g} ms, loopback"
    figs = []
    for key, title, unit, fn in (
        ("chunks_per_s", "chunks/s", "chunks/s", lambda r: r["chunks"] / r["wall_s"]),
        ("streams_per_s", "streams/s", "streams/s", lambda r: n / r["wall_s"]),
        ("wall", "wall time of the run", "s", lambda r: r["wall_s"]),
        (
            "cpu_per_chunk",
            "client CPU per chunk",
            "us/chunk",
            lambda r: r["cpu_s"] / r["chunks"] * 1e6,
        ),
    ):
        figs.append(
            c.figure(
                f"concurrency.net.{key}",
                f"{n} concurrent async streams over HTTP: {title}",
                unit,
                baseline_name="bare AsyncOpenAI",
                baseline=series("bare", fn),
                name="guarded (streamguard.guard)",
                values=series("guarded", fn),
                note=note,
            )
        )
    figs.append(
        c.figure(
            "concurrency.net.peak_memory",
            f"{n} concurrent async streams over HTTP: peak Python memory per stream",
            "bytes/stream",
            baseline_name="bare AsyncOpenAI",
            baseline=peaks["bare"],
            name="guarded (streamguard.guard)",
            values=peaks["guarded"],
            note="tracemalloc peak above the start of the run, / streams",
        )
    )
    return figs


# ---------------------------------------------------------------------- B: in memory
async def _agen(units: int) -> AsyncIterator[str]:
    for _ in range(units):
        await asyncio.sleep(0)
        yield "tok"


async def _consume(it: Any) -> int:
    n = 0
    async for _ in it:
        n += 1
    return n


async def _mem_run(n: int, guarded: bool, rt: Any, units: int) -> float:
    """Seconds for ``n`` concurrent streams, opening them included."""
    from streamguard import GuardedAsyncIterator

    t0 = time.perf_counter()
    if guarded:
        its: list[Any] = [GuardedAsyncIterator(_agen(units), runtime=rt) for _ in range(n)]
    else:
        its = [_agen(units) for _ in range(n)]
    total = sum(await asyncio.gather(*(_consume(it) for it in its)))
    elapsed = time.perf_counter() - t0
    if total != n * units:
        raise RuntimeError(f"expected {n * units} units, got {total}")
    return elapsed


async def _mem_peak(n: int, guarded: bool, rt: Any, units: int) -> tuple[float, float]:
    """(peak bytes per stream during the run, bytes per stream still held after it)."""
    from streamguard import GuardedAsyncIterator

    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        if guarded:
            its: list[Any] = [GuardedAsyncIterator(_agen(units), runtime=rt) for _ in range(n)]
        else:
            its = [_agen(units) for _ in range(n)]
        await asyncio.gather(*(_consume(it) for it in its))
        del its
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - start) / n, (current - start) / n


def _in_memory(reps: int, n: int, units: int) -> list[dict[str, Any]]:
    # Default stall timer, armed per stream (a call_at on the loop); receipts counted, not kept.
    rt = c.make_runtime(keep_receipts=False)

    def on_new_loop(make: Callable[[], Awaitable[Any]]) -> Any:
        # A fresh loop per run: timers left armed by one run must not burden the next.
        return asyncio.run(make())  # type: ignore[arg-type]

    def timed(guarded: bool) -> Callable[[], float]:
        def go() -> float:
            value = on_new_loop(lambda: _mem_run(n, guarded, rt, units))
            c.clear_sinks(rt)
            return float(value)

        return go

    on_new_loop(lambda: _mem_run(100, True, rt, units))  # warm-up
    res = c.interleave({"bare": timed(False), "guarded": timed(True)}, reps, warmup=0)
    # Memory in separate runs (tracing slows everything), and once more with the stall timer
    # off: a timer holds its stream's core (and through it the span and the receipt) until it
    # fires, even after the stream has ended.
    no_timers = c.make_runtime(keep_receipts=False, stall_timeout=None)
    variants = {"bare": (False, rt), "guarded": (True, rt), "no_timers": (True, no_timers)}
    peaks: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for rep in range(max(1, reps // 2)):
        for name in list(variants) if rep % 2 == 0 else reversed(variants):
            guarded, runtime = variants[name]
            measure = functools.partial(_mem_peak, n, guarded, runtime, units)
            peaks[name].append(on_new_loop(measure))
    rt.shutdown(timeout=2.0)
    no_timers.shutdown(timeout=2.0)
    note = f"{n:,} concurrent streams x {units} units, no network"
    per_s = {side: [n * units / s for s in res[side]] for side in res}
    return [
        c.figure(
            "concurrency.mem.units_per_s",
            f"{n:,} concurrent in-memory async streams: throughput",
            "units/s",
            baseline_name="bare async generators",
            baseline=per_s["bare"],
            name="GuardedAsyncIterator",
            values=per_s["guarded"],
            note=note + "; opening the streams included",
        ),
        c.figure(
            "concurrency.mem.streams_per_s",
            f"{n:,} concurrent in-memory async streams: streams/s",
            "streams/s",
            baseline_name="bare async generators",
            baseline=[n / s for s in res["bare"]],
            name="GuardedAsyncIterator",
            values=[n / s for s in res["guarded"]],
            note=note,
        ),
        c.figure(
            "concurrency.mem.peak_memory",
            f"{n:,} concurrent in-memory async streams: peak memory per stream",
            "bytes/stream",
            baseline_name="bare async generators",
            baseline=[p for p, _ in peaks["bare"]],
            name="GuardedAsyncIterator",
            values=[p for p, _ in peaks["guarded"]],
            note="tracemalloc peak above the start of the run, / streams",
        ),
        c.figure(
            "concurrency.mem.retained_memory",
            f"{n:,} in-memory async streams: memory still held after all ended",
            "bytes/stream",
            baseline_name="bare async generators",
            baseline=[r for _, r in peaks["bare"]],
            name="GuardedAsyncIterator",
            values=[r for _, r in peaks["guarded"]],
            note="after the streams ended and were dropped, before their loop closed; "
            "default stall timer (30 s) armed",
        ),
        c.figure(
            "concurrency.mem.retained_memory_no_timers",
            f"{n:,} in-memory async streams: memory still held after all ended, no timers",
            "bytes/stream",
            baseline_name="bare async generators",
            baseline=[r for _, r in peaks["bare"]],
            name="GuardedAsyncIterator, stall_timeout=None",
            values=[r for _, r in peaks["no_timers"]],
            note="as above with every timer off",
        ),
    ]


def run() -> dict[str, Any]:
    c.setup_otel(c.OTEL_MODE, retain=False)
    rt = c.make_runtime(keep_receipts=False)
    c.install(rt)  # the runtime guard() uses
    if c.QUICK:
        net_reps, net_n, mem_reps, mem_n = 1, 50, 1, 500
    else:
        net_reps, net_n, mem_reps, mem_n = 3, 1000, 3, 10_000
    net, info = _network(net_reps, net_n)
    mem = _in_memory(mem_reps, mem_n, TOKENS)
    rt.shutdown(timeout=2.0)
    return {"figures": net + mem, "network": info}
