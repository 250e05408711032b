"""9. One long-lived task consuming many guarded streams: memory per stream after warm-up.

A worker loop, WebSocket handler or batch job consumes stream after stream in one task. Each
measurement runs in a fresh process (``python -m benchmarks.long_lived measure ...``, one JSON
line out): the task consumes ``warmup`` streams, then ``n`` more, then ``traced`` more with
tracemalloc on; between batches the stall-cut streams are let go and one collection runs.
Reported per stream of the measured batches: RSS growth (``/proc/self/statm``) and traced
growth (tracemalloc), and how many ``StreamCore``s are still alive at the end (weakly tracked:
must be 0). The same task over the same source unguarded, in the same process first, is the
baseline.

Streams end in every way a worker loop sees, in turn: exhausted, break + close, break + drop,
an exception in the loop (caught around it), a read cancelled by a timeout (asyncio.timeout /
trio.move_on_after), and a consumer that stops reading and holds the stream until the stall
timer cuts it while the task goes on.

Sources: ``engine`` (``GuardedAsyncIterator`` over an async generator that yields to the loop
on every chunk: StreamGuard's own cost, fast), ``sdk`` (openai ``AsyncOpenAI`` over HTTP on
loopback to ``streamguard.testing.Upstream`` in a process of its own: what a deployment keeps).
Loops: asyncio, uvloop, trio; ``--fork``: ``instrument()`` in the parent, measured in a child
of ``os.fork()`` (gunicorn ``--preload``).

Goal: RSS growth after warm-up < 200 B per stream.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from benchmarks import _common as c

GOAL_RSS = 200.0
MODEL = "gpt-4o-mini"
KINDS = 6
_PAGE = os.sysconf("SC_PAGE_SIZE")
_REPO = Path(__file__).resolve().parent.parent


class Boom(Exception):
    pass


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * _PAGE


class _Loop:
    """The few loop primitives the task needs, for asyncio/uvloop or trio."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "trio":
            import trio

            self.sleep: Callable[[float], Any] = trio.sleep
            self.cancel_now: Callable[[], Any] = lambda: trio.move_on_after(0)
        else:
            import asyncio

            self.sleep = asyncio.sleep

            @contextlib.asynccontextmanager
            async def timeout0() -> AsyncIterator[None]:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0):
                        yield

            self.cancel_now = timeout0

    def run(self, main: Callable[[], Any]) -> None:
        if self.name == "trio":
            import trio

            trio.run(main)
            return
        import asyncio

        factory = None
        if self.name == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())


async def _consume(loop: _Loop, stream: Any, kind: int, held: list[Any], keep: int = 400) -> None:
    """End ``stream`` in way number ``kind``; at most ``keep`` held streams are kept."""
    if kind == 0:  # exhausted
        async for _ in stream:
            pass
    elif kind == 1:  # break + close
        async for _ in stream:
            break
        await stream.close() if hasattr(stream, "response") else await stream.aclose()
    elif kind == 2:  # break + drop
        async for _ in stream:
            break
    elif kind == 3:  # an exception in the loop, caught around it
        with contextlib.suppress(Boom):
            async for _ in stream:
                raise Boom
    elif kind == 4:  # two chunks, then a read cancelled by the loop's own timeout
        async for i, _ in _enumerate(stream):
            if i == 1:
                break
        if loop.name == "trio":
            with loop.cancel_now():
                async for _ in stream:
                    pass
        else:
            async with loop.cancel_now():
                async for _ in stream:
                    pass
    else:  # stops reading and holds the stream: the stall timer cuts it
        async for _ in stream:
            break
        held.append(stream)
        if len(held) > keep:
            del held[: keep // 2]  # cut by the stall timer long ago


def _top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[str]:
    """Where the traced batch's growth was allocated: the five largest lines, for a failure
    message to say whose memory grew."""
    own = tracemalloc.Filter(False, tracemalloc.__file__)
    diff = after.filter_traces([own]).compare_to(before.filter_traces([own]), "lineno")
    return [f"{d.size_diff:+d} B {d.count_diff:+d} blocks {d.traceback[0]}" for d in diff[:5]]


async def _enumerate(stream: Any) -> AsyncIterator[tuple[int, Any]]:
    i = 0
    async for item in stream:
        yield i, item
        i += 1


def measure(
    loop_name: str, source: str, n: int, warmup: int, traced: int, bare_n: int | None = None
) -> dict[str, Any]:
    """The bare then the guarded task in this process; the figures of each. The bare task
    consumes ``bare_n`` streams in its measured batch (default ``n``): its figures are per
    stream too, and over the SDK it is the slow half of the run."""
    import streamguard
    from streamguard._engine.core import StreamCore
    from streamguard._receipts.signing import HmacSigner

    loop = _Loop(loop_name)
    sink = c.CountingSink()
    stall = 0.05 if source == "engine" else 0.2
    # Held streams are kept well past their stall cut (at >= 0.5 ms a stream, 6 * keep / 2
    # streams later; a close that no longer waits for its receipt makes streams faster, hence
    # 1,200 on the engine), but not many more: over the SDK each holds a connection's buffers,
    # and a measured batch holding more at its peak than the warm-up did would count the higher
    # high-water mark of the heap as growth.
    keep = 1200 if source == "engine" else 64
    cores: weakref.WeakSet[StreamCore] = weakref.WeakSet()
    reasons: dict[str, int] = {}
    up: Any = None
    client: Any = None

    class Sink(c.CountingSink):
        def emit(self, receipt: Any) -> None:
            self.count += 1
            reasons[receipt.reason] = reasons.get(receipt.reason, 0) + 1

    sink = Sink()

    async def chunks() -> AsyncIterator[str]:
        for _ in range(5):
            await loop.sleep(0)
            yield "tok"

    async def open_stream(guarded: bool, kind: int) -> Any:
        if source == "engine":
            if not guarded:
                return _Bare(chunks())
            stream = streamguard.GuardedAsyncIterator(
                chunks(), provider="openai", model=MODEL, stall_timeout=stall if kind == 5 else 30.0
            )
            cores.add(stream._core)
            return stream
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
        driver = stream.__dict__.get("_streamguard")
        if driver is not None:
            cores.add(driver.core)
        return stream

    async def batch(guarded: bool, count: int, start: int, held: list[Any]) -> None:
        for i in range(start, start + count):
            stream = await open_stream(guarded, i % KINDS)
            await _consume(loop, stream, i % KINDS, held, keep)
            del stream

    async def settle(held: list[Any]) -> None:
        await loop.sleep(3 * stall)  # the held streams are cut by now
        held.clear()
        await loop.sleep(0.05)
        # Receipts are sealed on the writer's thread; a queued stream is alive until sealed (the
        # queue is bounded): what is measured is what stays after the writer caught up.
        streamguard.flush()
        gc.collect()
        # Streams let go in that collection (break + drop) close their upstream on this loop
        # now, and only then release their connection: wait for their receipts.
        for _ in range(250):
            if not streamguard.active_streams():
                break
            await loop.sleep(0.02)
        # The SDK's own async generators let go in that collection are finalised by tasks the
        # loop runs now (asyncio's and trio's asyncgen hooks), holding their frames until then;
        # what those finalisers let go can hold more generators: settle until a collection
        # finds nothing (trio's finaliser runs in a system task, a batch per round).
        for _ in range(20):
            await loop.sleep(0.1)
            if not gc.collect():
                break

    async def task(guarded: bool, out: dict[str, Any]) -> None:
        held: list[Any] = []
        count = n if guarded or bare_n is None else bare_n
        await batch(guarded, warmup, 0, held)
        await settle(held)
        r0, t0 = _rss(), time.perf_counter()
        await batch(guarded, count, warmup, held)
        await settle(held)
        out["streams"] = count
        out["seconds"] = round(time.perf_counter() - t0, 2)
        out["rss_bytes_per_stream"] = (_rss() - r0) / count
        tracemalloc.start()
        m0, s0 = tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()
        await batch(guarded, traced, warmup + count, held)
        await settle(held)
        out["traced_bytes_per_stream"] = (tracemalloc.get_traced_memory()[0] - m0) / traced
        out["traced_top"] = _top_growth(s0, tracemalloc.take_snapshot())
        tracemalloc.stop()

    async def main_sdk(guarded: bool, out: dict[str, Any]) -> None:
        nonlocal client
        import openai

        client = openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
        async with client:
            await task(guarded, out)
        client = None

    def run_one(guarded: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if source == "engine":
            loop.run(lambda: task(guarded, out))
        else:
            loop.run(lambda: main_sdk(guarded, out))
        return out

    result: dict[str, Any] = {"loop": loop_name, "source": source, "streams": n}
    result["pid"] = os.getpid()
    if source == "sdk":
        from benchmarks._upstream_proc import RemoteUpstream

        up = RemoteUpstream(token_interval=0.0).start()
    try:
        result["bare"] = run_one(False)
        streamguard.instrument(
            sinks=[sink], signer=HmacSigner(c.HMAC_SECRET, key_id=c.KEY_ID), stall_timeout=stall
        )

        def guarded_run() -> dict[str, Any]:
            out = run_one(True)
            result["receipts"], result["reasons"] = sink.count, dict(sorted(reasons.items()))
            return out

        result["guarded"] = _maybe_forked(result, guarded_run)
        gc.collect()
        result["alive_cores"] = len(cores)
        streamguard.uninstrument()
    finally:
        if up is not None:
            up.stop()
    result["receipts"] = sink.count
    result["reasons"] = dict(sorted(reasons.items()))
    if _FORK:  # the child's receipts, not the parent's (which has none)
        result["receipts"] = result["guarded"].pop("receipts", 0)
        result["reasons"] = result["guarded"].pop("reasons", {})
    return result


_FORK = False


def _maybe_forked(result: dict[str, Any], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()`` here, or with ``--fork`` in a child of ``os.fork()`` (instrumented before)."""
    if not _FORK:
        return run()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, exit without cleanup
        code = 0
        try:
            out = run()
            gc.collect()
            from streamguard._engine.core import StreamCore

            out["alive_cores_in_child"] = sum(
                1 for o in gc.get_objects() if isinstance(o, StreamCore)
            )
            out["child_pid"] = os.getpid()
            out["receipts"], out["reasons"] = result["receipts"], result["reasons"]
            os.write(w, json.dumps(out).encode())
        except BaseException as exc:
            os.write(w, json.dumps({"error": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out = json.loads(data or b"{}")
    out["exit_status"] = status
    return out


class _Bare:
    """The unguarded stream of the baseline: the generator, with the SDK's ``close``."""

    def __init__(self, gen: AsyncIterator[str]) -> None:
        self.gen = gen

    def __aiter__(self) -> AsyncIterator[str]:
        return self.gen

    async def aclose(self) -> None:
        await self.gen.aclose()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------- driver
def run_child(
    loop: str,
    source: str,
    n: int,
    *,
    fork: bool = False,
    warmup: int | None = None,
    traced: int | None = None,
    bare: int | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """One measurement in a fresh process; its JSON result."""
    return Child(loop, source, n, fork=fork, warmup=warmup, traced=traced, bare=bare).result(
        timeout
    )


class Child:
    """One measurement running in a process of its own (started at once; ``result`` waits), so
    that several can run side by side (one per core: the SDK runs wait on their upstream)."""

    def __init__(
        self,
        loop: str,
        source: str,
        n: int,
        *,
        fork: bool = False,
        warmup: int | None = None,
        traced: int | None = None,
        bare: int | None = None,
    ) -> None:
        warmup = max(500, n // 10) if warmup is None else warmup
        traced = max(300, n // 10) if traced is None else traced
        cmd = [sys.executable, "-m", "benchmarks.long_lived", "measure", loop, source, str(n)]
        cmd += ["--warmup", str(warmup), "--traced", str(traced)] + (["--fork"] if fork else [])
        cmd += [] if bare is None else ["--bare", str(bare)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGUARD_", "OTEL_"))}
        self.what = " ".join(cmd[2:])
        self.proc = subprocess.Popen(
            cmd, cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def result(self, timeout: float = 600.0) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.what} failed: {err[-2000:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


def run() -> dict[str, Any]:
    """For ``python -m benchmarks``: asyncio and trio, engine and SDK, and a forked worker.

    The SDK runs are those of ``make soak`` (20,000 streams, a 3,000-stream unguarded
    baseline), asyncio and trio side by side (each mostly waits for its upstream)."""
    quick = c.QUICK
    n = 3000 if quick else 20_000
    runs = [run_child(loop, "engine", n, fork=fork) for loop, fork in SDK_FREE_CASES]
    # Quick: small SDK batches (~5-10 ms a stream here), to stay < 60 s.
    sdk_n, warmup, traced, bare = (100, 100, 100, None) if quick else (20_000, 1000, 1000, 3000)
    children = [
        Child(loop, "sdk", sdk_n, warmup=warmup, traced=traced, bare=bare)
        for loop in ("asyncio", "trio")
    ]
    runs += [child.result(timeout=1800) for child in children]
    return {"figures": figures_of(runs), "runs": runs}


SDK_FREE_CASES = [("asyncio", False), ("trio", False), ("asyncio", True)]


def figures_of(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The figures of ``run_child`` results. The goal is on what the guard adds to the same
    task unguarded: over the SDK, the unguarded baseline grows by itself (the SDK's own)."""
    figures = []
    for res in runs:
        loop, source, n = res["loop"], res["source"], res["streams"]
        fork = "child_pid" in res["guarded"]
        where = f"{loop}{', forked worker' if fork else ''}, {source}"
        g, b = res["guarded"], res["bare"]
        for metric, label in (("rss", "RSS"), ("traced", "traced")):
            key = f"{metric}_bytes_per_stream"
            fig = c.figure(
                f"long_lived.{metric}.{loop}{'.fork' if fork else ''}.{source}",
                f"{label} growth per stream after warm-up ({where}, {n:,} streams)",
                "B/stream",
                baseline_name="unguarded",
                baseline=[b[key]],
                name="guarded",
                values=[g[key]],
                note=(
                    f"{where}: {n:,} streams in {g['seconds']} s (unguarded: "
                    f"{b.get('streams', n):,} in {b['seconds']} s); "
                    f"StreamCores alive after: {res['alive_cores']}; receipts by reason "
                    f"{res['reasons']}."
                ),
            )
            if metric == "rss":
                c.goal(fig, "added", "<", GOAL_RSS, "RSS growth added < 200 B/stream")
            figures.append(fig)
    return figures


def main(argv: list[str] | None = None) -> int:
    global _FORK
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long_lived")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="one measurement in this process (JSON out)")
    m.add_argument("loop", choices=("asyncio", "uvloop", "trio"))
    m.add_argument("source", choices=("engine", "sdk"))
    m.add_argument("n", type=int)
    m.add_argument("--warmup", type=int, default=2000)
    m.add_argument("--traced", type=int, default=2000)
    m.add_argument("--fork", action="store_true")
    m.add_argument("--bare", type=int, default=None, help="streams of the bare measured batch")
    args = parser.parse_args(argv)
    _FORK = args.fork
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("streamguard").setLevel(logging.ERROR)
    print(json.dumps(measure(args.loop, args.source, args.n, args.warmup, args.traced, args.bare)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
