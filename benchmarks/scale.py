"""12. Scale: 1,000 and 10,000 concurrent async streams in one process, CPU time and RSS.

What issue 16 asks: N concurrent async SDK streams in one process (N = 1,000 and 10,000)
guarded by ``streamguard.instrument()``, against the same N unguarded, at >= 0.95x the bare
throughput and <= 4 KB RSS added per stream.

- **The streams**: the real SDK (openai ``AsyncOpenAI`` chat, ollama ``AsyncClient.chat``;
  quick: ollama only)
  parsing a body recorded once from the project's upstream (``floor.Replay``), served from
  memory one wire frame per read, **yielding to the event loop between frames**, so that all
  N streams are open and interleaved at once, as N slow upstreams would keep them.
- **Throughput**: streams per CPU second of the process (``time.process_time``: the guard's
  own threads count, a busy neighbour does not), from the first ``create`` to the last chunk
  (streams, not chunks: the guard hides openai's usage chunk it asked for, one chunk less).
- **RSS**: the resident set (``/proc/self/statm``) when every stream has read half its chunks
  and waits (all N open at once), minus the RSS before the N streams started (after a warm-up
  batch, so imports and caches are not counted); the added figure is guarded minus bare,
  divided by N. Receipts go to a counting sink that keeps none (``_common.CountingSink``).
- **Isolation**: every run is a fresh process (RSS only grows within a process), bare and
  guarded alternating A B B A ...; medians over the runs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _common as c

GOAL_RATIO = 0.95
GOAL_KB = 4.0
PROVIDERS = ("openai", "ollama")
SIZES = (1000, 10000)
_PAGE = os.sysconf("SC_PAGE_SIZE")
_IGNORED_ENV = ("STREAMGUARD_", "OTEL_")  # the machine's configuration must not change it
_SITES = 0  # > 0: trace allocations (that many frames each) while the N streams open


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * _PAGE


# ------------------------------------------------------------------------------- child
class _Gate:
    """Holds every stream at half its chunks until all N are there (all open at once)."""

    def __init__(self, n: int) -> None:
        self.n, self.waiting = n, 0
        self.all_open = asyncio.Event()
        self.go = asyncio.Event()

    async def half(self) -> None:
        self.waiting += 1
        if self.waiting == self.n:
            self.all_open.set()
        await self.go.wait()


async def _one(provider: str, client: Any, tokens: int, half: int, gate: _Gate | None) -> int:
    from benchmarks.floor import open_stream

    stream = await open_stream(provider, client, tokens)
    n = 0
    async for _ in stream:
        n += 1
        if n == half and gate is not None:
            await gate.half()
    return n


async def _settle() -> None:
    """Until every other task on the loop is done."""
    while True:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not others:
            return
        await asyncio.gather(*others, return_exceptions=True)


async def _run(
    provider: str, client: Any, n: int, tokens: int, flush: Callable[[], object]
) -> dict[str, Any]:
    # Warm-up: every code path once (imports, caches, the price table), then the baseline.
    await asyncio.gather(*(_one(provider, client, tokens, 0, None) for _ in range(20)))
    await _settle()
    flush()
    gc.collect()
    snap0: Any = None
    if _SITES:
        tracemalloc.start(_SITES)
        snap0 = tracemalloc.take_snapshot()
    rss0 = _rss()
    gate = _Gate(n)
    half = max(1, tokens // 2)
    cpu0 = time.process_time()
    tasks = [asyncio.ensure_future(_one(provider, client, tokens, half, gate)) for _ in range(n)]
    await gate.all_open.wait()
    rss_open = _rss()
    sites = _sites(snap0, tracemalloc.take_snapshot(), n) if _SITES else None
    tracemalloc.stop()
    gate.go.set()
    chunks = sum(await asyncio.gather(*tasks))
    await _settle()  # the guard's closing tasks (and so the receipts) are part of the work
    flush()  # receipts are sealed on the runtime's writer thread: its CPU counts too
    cpu = time.process_time() - cpu0
    out: dict[str, Any] = {"chunks": chunks, "cpu_s": cpu, "rss_added": rss_open - rss0}
    if sites is not None:
        out["sites"] = sites
    return out


def _sites(snap0: Any, snap1: Any, n: int) -> dict[str, Any]:
    """What the N open streams hold, by allocation site (``python -m benchmarks.scale sites``):
    per line (the innermost frame), and per call chain for chains through StreamGuard."""
    from benchmarks._profile import short_path

    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    snap0, snap1 = snap0.filter_traces(keep), snap1.filter_traces(keep)
    total = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    lines = {}
    for stat in snap1.compare_to(snap0, "lineno"):
        if abs(stat.size_diff) >= 4 * n:
            frame = stat.traceback[0]
            lines[f"{short_path(frame.filename)}:{frame.lineno}"] = [
                stat.size_diff / n,
                stat.count_diff / n,
            ]
    chains = []
    for stat in snap1.compare_to(snap0, "traceback"):
        where = [f"{short_path(f.filename)}:{f.lineno}" for f in stat.traceback]
        if stat.size_diff >= 4 * n and any("streamguard/" in w for w in where):
            chains.append([stat.size_diff / n, stat.count_diff / n, where])
    return {"bytes_per_stream": total / n, "lines": lines, "chains": chains[:60]}


def child(variant: str, provider: str, n: int, tokens: int, frames_file: str) -> dict[str, Any]:
    from benchmarks import floor

    c.setup_otel(c.OTEL_MODE, retain=False)
    with open(frames_file, encoding="utf-8") as f:
        recorded = json.load(f)
    client, replay = floor.make_client(provider, True, "http://unused")
    replay.stream_type = type(
        "YieldingFrames",
        (_YieldingFrames, replay.module.SyncByteStream, replay.module.AsyncByteStream),
        {},
    )
    replay.recorded = (recorded["content_type"], [s.encode("latin-1") for s in recorded["frames"]])
    flush: Callable[[], object] = _nothing
    if variant == "guarded":
        import streamguard
        from streamguard._runtime import get_runtime

        kwargs = c.instrument_kwargs()
        kwargs["sinks"] = [c.CountingSink()]
        streamguard.instrument(**kwargs)
        floor._join_warmup()
        flush = get_runtime().flush
    loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(_run(provider, client, n, tokens, flush))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if variant == "guarded":
        from streamguard._runtime import get_runtime

        result["receipts"] = len(get_runtime().sinks[0])
    return result


def _nothing() -> None:
    return None


class _YieldingFrames(c.Frames):
    async def __aiter__(self) -> Any:
        for frame in self.frames:
            await asyncio.sleep(0)  # another stream's turn: N slow upstreams, interleaved
            yield frame


# ------------------------------------------------------------------------------ parent
def _record(provider: str, tokens: int, url: str) -> dict[str, Any]:
    """The body the upstream sends this SDK's request (recorded with the guard on, as floor's)."""
    from benchmarks import floor

    case = floor.Case(provider, True, tokens, 1, url)
    try:
        case.record()
        assert case.replay.recorded is not None
        content_type, frames = case.replay.recorded
    finally:
        case.close()
    return {"content_type": content_type, "frames": [f.decode("latin-1") for f in frames]}


def _spawn(
    variant: str, provider: str, n: int, tokens: int, frames_file: str, sites: str = "0"
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        result_path = out.name
    cmd = [sys.executable, "-m", "benchmarks.scale", variant, provider, str(n), str(tokens)]
    cmd += [frames_file, result_path, c.OTEL_MODE, sites]
    try:
        subprocess.run(
            cmd,
            cwd=Path(__file__).resolve().parent.parent,
            check=True,
            timeout=600,
            capture_output=True,
            env={k: v for k, v in os.environ.items() if not k.startswith(_IGNORED_ENV)},
        )
        result: dict[str, Any] = json.loads(Path(result_path).read_text(encoding="utf-8"))
    finally:
        os.unlink(result_path)
    return result


def run() -> dict[str, Any]:
    from streamguard.testing import Upstream

    tokens = 10 if c.QUICK else 20
    reps = 1 if c.QUICK else 2
    providers = ("ollama",) if c.QUICK else PROVIDERS  # quick: the cheapest SDK parse
    figures: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sg-scale-") as tmp:
        frames: dict[str, str] = {}
        with Upstream(token_interval=0) as up:
            for provider in providers:
                path = os.path.join(tmp, f"{provider}.json")
                Path(path).write_text(json.dumps(_record(provider, tokens, up.url)), "utf-8")
                frames[provider] = path
        for provider in providers:
            for n in SIZES:
                runs: dict[str, list[dict[str, Any]]] = {"bare": [], "guarded": []}
                for rep in range(reps):
                    order = ("bare", "guarded") if rep % 2 == 0 else ("guarded", "bare")
                    for variant in order:
                        runs[variant].append(_spawn(variant, provider, n, tokens, frames[provider]))
                key = f"{provider}.{n}"
                checks[key] = {
                    "chunks_bare": runs["bare"][0]["chunks"],
                    "chunks_guarded": runs["guarded"][0]["chunks"],
                    "receipts": [r.get("receipts") for r in runs["guarded"]],
                }
                if {r.get("receipts") for r in runs["guarded"]} != {n + 20}:
                    raise RuntimeError(f"{key}: not every stream was guarded: {checks[key]}")
                figures += _figures(provider, n, tokens, runs)
    return {"figures": figures, "checks": checks}


def _figures(
    provider: str, n: int, tokens: int, runs: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    sg = f"StreamGuard (OTel {'API only' if c.OTEL_MODE == 'noop' else 'SDK'})"
    title = f"{provider} async, {n:,} concurrent streams, OTel {c.OTEL_MODE}"
    note = f"{tokens} chunks per stream, {len(runs['bare'])} process(es) per variant"
    tput = c.figure(
        f"scale.throughput.{provider}.{n}.{c.OTEL_MODE}",
        title + ", throughput",
        "streams per CPU s",
        baseline_name="bare SDK",
        baseline=[n / r["cpu_s"] for r in runs["bare"]],
        name=sg,
        values=[n / r["cpu_s"] for r in runs["guarded"]],
        note=note,
    )
    c.goal(tput, "ratio", ">=", GOAL_RATIO, ">= 0.95x bare throughput")
    rss = c.figure(
        f"scale.rss.{provider}.{n}.{c.OTEL_MODE}",
        title + ", RSS per open stream",
        "KB per stream",
        baseline_name="bare SDK",
        baseline=[r["rss_added"] / n / 1024 for r in runs["bare"]],
        name=sg,
        values=[r["rss_added"] / n / 1024 for r in runs["guarded"]],
        note=note + "; RSS with all N open, over the RSS before them",
    )
    c.goal(rss, "added", "<=", GOAL_KB, "<= 4 KB RSS added per stream")
    return [tput, rss]


def profile(ids: list[str]) -> dict[str, Any]:
    return {}  # a cProfile of 10,000 streams says what floor's profiles of one stream say


def _exit_with_parent() -> None:
    """A child whose worker was killed (the driver's timeout) must not run on alone."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def sites_main(argv: list[str]) -> None:
    """``python -m benchmarks.scale sites PROVIDER N OTEL [FRAMES]``: the allocation sites of N
    open streams, bare and guarded (each in a fresh process), largest first."""
    from streamguard.testing import Upstream

    provider, n, otel = argv[0], int(argv[1]), argv[2]
    frames = argv[3] if len(argv) > 3 else "3"
    c.OTEL_MODE = otel
    tokens = 10
    with tempfile.TemporaryDirectory(prefix="sg-scale-") as tmp:
        path = os.path.join(tmp, f"{provider}.json")
        with Upstream(token_interval=0) as up:
            Path(path).write_text(json.dumps(_record(provider, tokens, up.url)), "utf-8")
        res = {v: _spawn(v, provider, n, tokens, path, sites=frames) for v in ("bare", "guarded")}
    bare, guarded = res["bare"]["sites"], res["guarded"]["sites"]
    print(
        f"traced: bare {bare['bytes_per_stream']:.0f} B/stream, guarded "
        f"{guarded['bytes_per_stream']:.0f}; RSS bare {res['bare']['rss_added'] / n:.0f}, "
        f"guarded {res['guarded']['rss_added'] / n:.0f} (tracemalloc's own memory included)"
    )
    print("== per line, guarded minus bare (B/stream, objects/stream, both differences)")
    # Lines of bare alone count too (negative): an SDK allocation made under a guard's frame
    # moves from the SDK's line to the guard's, and is not the guard's cost.
    diff = {
        where: (
            guarded["lines"].get(where, [0, 0])[0] - bare["lines"].get(where, [0, 0])[0],
            guarded["lines"].get(where, [0, 0])[1] - bare["lines"].get(where, [0, 0])[1],
        )
        for where in {*guarded["lines"], *bare["lines"]}
    }
    for where, (size, count) in sorted(diff.items(), key=lambda kv: -abs(kv[1][0])):
        if abs(size) >= 4:
            print(f"{size:8.0f} B {count:6.2f}x  {where}")
    print("== guarded, call chains through StreamGuard")
    for size, count, chain in guarded["chains"]:
        print(f"{size:8.0f} B {count:6.2f}x  " + " <- ".join(chain))


if __name__ == "__main__":
    import logging
    import warnings

    if sys.argv[1] == "sites":
        sites_main(sys.argv[2:])
        sys.exit(0)
    _exit_with_parent()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    variant, provider, n_, tokens_, frames_file, result_file, otel = sys.argv[1:8]
    c.OTEL_MODE = otel
    _SITES = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    res = child(variant, provider, int(n_), int(tokens_), frames_file)
    Path(result_file).write_text(json.dumps(res), encoding="utf-8")
