"""5. Stop latency: from the stop signal to the upstream socket closed, p50 and p99.

Against ``streamguard.testing.Upstream`` (in its own process, see ``_upstream_proc``; token
interval 5 ms): open an openai chat stream (sync), read 2 chunks, ``t0 =
time.monotonic_ns()``, stop it. Two clocks:

- client side: the receipt's ``times.upstream_closed - times.stop_requested`` (what the guard
  itself saw: the stop signal to its close of the HTTP response returning);
- server side: ``record.disconnected_ns - t0``, when the upstream saw the connection go (the
  definition of DESIGN G1: stop signal to upstream socket closed).

Stops: 1000 ``stream.close()`` (sync), 200 ``del stream`` (the guard's finaliser), 200 ``await
stream.close()`` (async). Each guarded stop alternates with the same ``close()`` on an
unguarded SDK stream (the baseline: what closing costs without StreamGuard). Streams are
guarded with ``streamguard.guard(stream)`` so the two can alternate stream by stream; the
runtime is the benchmarks' (HMAC signer, in-memory receipt sink, OTel SDK providers).

Goal: p99 <= 5 ms.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks import _common as c
from benchmarks._upstream_proc import RemoteUpstream

GOAL_MS = 5.0
INTERVAL = 0.005
MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "Tell me everything."}]


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def _outcome(up: RemoteUpstream, n: int, t0: int, t1: int, handle: Any) -> dict[str, Any]:
    record = up.record(n, since_ns=t0)
    out: dict[str, Any] = {
        "call_ms": (t1 - t0) / 1e6,
        "server_ms": None
        if record["disconnected_ns"] is None
        else (record["disconnected_ns"] - t0) / 1e6,
        "upstream_outcome": record["outcome"],
        "tokens_after": record["tokens_after"],
    }
    if handle is not None:
        receipt = handle.wait_receipt(5.0)
        times = receipt.times if receipt is not None else None
        if times is not None and times.upstream_closed and times.stop_requested:
            out["client_ms"] = (times.upstream_closed - times.stop_requested) / 1e6
    return out


def _sync_stop(client: Any, up: RemoteUpstream, n: int, guarded: bool, how: str) -> dict[str, Any]:
    import streamguard

    raw = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=200, stream=True
    )
    stream = streamguard.guard(raw, model=MODEL) if guarded else raw
    del raw
    it = iter(stream)
    next(it)
    next(it)
    del it
    handle = streamguard.handle_of(stream)
    if how == "del":
        t0 = time.monotonic_ns()
        del stream
        t1 = time.monotonic_ns()
    else:
        t0 = time.monotonic_ns()
        stream.close()
        t1 = time.monotonic_ns()
        del stream
    return _outcome(up, n, t0, t1, handle)


async def _async_stop(client: Any, up: RemoteUpstream, n: int, guarded: bool) -> dict[str, Any]:
    import streamguard

    raw = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=200, stream=True
    )
    stream = streamguard.guard(raw, model=MODEL) if guarded else raw
    del raw
    it = stream.__aiter__()
    await it.__anext__()
    await it.__anext__()
    del it
    handle = streamguard.handle_of(stream)
    t0 = time.monotonic_ns()
    await stream.close()
    t1 = time.monotonic_ns()
    return _outcome(up, n, t0, t1, handle)


def _abba(count: int) -> list[bool]:
    """guarded?, in the order G B B G G B B G ...: each side goes first half the time."""
    return [(i % 4) in (0, 3) for i in range(2 * count)]


def _series(results: list[tuple[bool, dict[str, Any]]], guarded: bool, key: str) -> list[float]:
    return [r[key] for g, r in results if g is guarded and r.get(key) is not None]


def _figures(
    label: str, how: str, results: list[tuple[bool, dict[str, Any]]], base_label: str
) -> list[dict[str, Any]]:
    figures = []
    server = c.latency_figure(
        f"stop.{label}.server",
        f"Stop latency, {how}: stop signal -> upstream saw the disconnect",
        "ms",
        baseline_name=base_label,
        baseline=_series(results, False, "server_ms"),
        name=f"guarded, {how}",
        values=_series(results, True, "server_ms"),
        note="server side: record.disconnected_ns - t0",
    )
    figures.append(c.goal(server, "p99", "<=", GOAL_MS, "p99 <= 5 ms"))
    client = c.latency_figure(
        f"stop.{label}.client",
        f"Stop latency, {how}: receipt upstream_closed - stop_requested",
        "ms",
        baseline_name=f"{base_label}: close() call duration",
        baseline=_series(results, False, "call_ms"),
        name=f"guarded, {how} (receipt times)",
        values=_series(results, True, "client_ms"),
        note="client side: the guard's own clock, from the receipt",
    )
    figures.append(c.goal(client, "p99", "<=", GOAL_MS, "p99 <= 5 ms"))
    figures.append(
        c.latency_figure(
            f"stop.{label}.call",
            f"Stop call duration, {how}: the application's stop statement returning",
            "ms",
            baseline_name=base_label,
            baseline=_series(results, False, "call_ms"),
            name=f"guarded, {how}",
            values=_series(results, True, "call_ms"),
            note="t0 to the statement returning (includes sealing the receipt when guarded)",
        )
    )
    return figures


def _extra(results: list[tuple[bool, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for guarded in (True, False):
        side = "guarded" if guarded else "bare"
        rows = [r for g, r in results if g is guarded]
        after = [r["tokens_after"] for r in rows if r["tokens_after"] is not None]
        out[side] = {
            "stops": len(rows),
            "not_disconnected": sum(1 for r in rows if r["upstream_outcome"] != "disconnected"),
            "tokens_after_stop_max": max(after) if after else None,
            "tokens_after_stop_mean": sum(after) / len(after) if after else None,
        }
    return out


def run() -> dict[str, Any]:
    import httpx2
    import openai

    c.setup_otel(c.OTEL_MODE, retain=False)
    rt = c.make_runtime()
    c.install(rt)
    n_close, n_del, n_async = (60, 10, 10) if c.QUICK else (1000, 200, 200)
    figures: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with RemoteUpstream(token_interval=INTERVAL) as up:
        counter = _Counter()
        client = openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
        # Warm up both paths (connections, imports, the pricing tables of the first receipt).
        for guarded in (True, False, True, False):
            _sync_stop(client, up, counter.next(), guarded, "close")

        results = []
        for guarded in _abba(n_close):
            results.append((guarded, _sync_stop(client, up, counter.next(), guarded, "close")))
            c.clear_sinks(rt)
        figures += _figures("sync_close", "stream.close() (sync)", results, "unguarded close()")
        extra["sync_close"] = _extra(results)

        results = []
        for guarded in _abba(n_del):
            how = "del" if guarded else "close"
            results.append((guarded, _sync_stop(client, up, counter.next(), guarded, how)))
        figures += _figures("sync_del", "del stream (sync)", results, "unguarded close()")
        extra["sync_del"] = _extra(results)
        client.close()

        async def async_series() -> list[tuple[bool, dict[str, Any]]]:
            aclient = openai.AsyncOpenAI(
                base_url=up.openai_base_url,
                api_key="k",
                max_retries=0,
                http_client=httpx2.AsyncClient(),
            )
            try:
                for guarded in (True, False):
                    await _async_stop(aclient, up, counter.next(), guarded)
                out = []
                for guarded in _abba(n_async):
                    out.append((guarded, await _async_stop(aclient, up, counter.next(), guarded)))
                return out
            finally:
                await aclient.close()

        results = asyncio.run(async_series())
        figures += _figures(
            "async_close", "await stream.close() (async)", results, "unguarded await close()"
        )
        extra["async_close"] = _extra(results)
    rt.shutdown(timeout=2.0)
    return {"figures": figures, "upstream": extra, "token_interval_ms": INTERVAL * 1000}


def profile(ids: list[str]) -> dict[str, Any]:
    """Profile the guarded sync close path (stop signal to receipt), the one that is timed."""
    import openai

    import streamguard
    from benchmarks._profile import profile as prof

    c.setup_otel(c.OTEL_MODE, retain=False)
    rt = c.make_runtime()
    c.install(rt)
    n = 20 if c.QUICK else 100
    with RemoteUpstream(token_interval=INTERVAL) as up:
        client = openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
        streams = []
        for _ in range(n + 1):
            s = streamguard.guard(
                client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=200, stream=True
                ),
                model=MODEL,
            )
            it = iter(s)
            next(it)
            next(it)
            streams.append(s)
        streams.pop().close()  # the first receipt loads the pricing tables

        def body() -> None:
            for s in streams:
                s.close()

        result = prof(body, units=n)
        client.close()
    rt.shutdown(timeout=2.0)
    return {fid: result for fid in ids}
