"""9. Cost at the floor: CPU time the guard adds per chunk and per stream, on all five SDKs.

What issue 16 measures, measured the same way: **CPU time** of this process
(``time.process_time_ns``: it counts the guard's own threads too, and a busy neighbour on a
shared machine does not inflate it the way wall time does), each variant against the bare SDK
in the same process, interleaved A B C, C B A, ..., median and min-max over repetitions.

Rows, per SDK (openai chat, anthropic messages, ollama chat, google-genai
``generate_content_stream``, mistralai ``chat.stream``), sync and async:

- **bare**: the SDK, not instrumented;
- **floor**: the same stream behind a do-nothing ``wrapt.ObjectProxy`` (``__next__`` /
  ``__anext__`` forward and return): the least any guard built on a proxy must add;
- **StreamGuard**: ``streamguard.instrument()``; the OTel mode is the worker's (``noop``: OTel
  API only; ``sdk``: tracer, logger and meter providers with in-memory exporters).

Two stream shapes: a 1,000-token answer (per-chunk figure: CPU ns per chunk, the ``create``
call included) and a 1-token answer (per-stream figure: CPU us per whole stream, where the
span, the receipt and its signature, the log record and the metrics dominate).

The bytes are the project's own wire-protocol upstream's (``streamguard.testing.Upstream``),
recorded once per client through the SDK's real request (so every SDK gets the body it asks
for), then served from memory one wire frame per read by the HTTP client's ``MockTransport``:
the SDK's real SSE/NDJSON parsing runs, no network. The recording is made with the guard on,
so openai's body carries the ``include_usage`` chunk the guard asks for, for every row.

A block of ``k`` streams is timed as a whole, up to ``streamguard.flush()`` (the receipts of
its guarded streams are sealed on the writer's thread; process CPU time counts it): the figure
is CPU per stream, every receipt included.

A third figure (OTel SDK mode): the guarded ``close()`` statement against the bare one, p50 and
p99, over loopback (``close_latency``).

Goals (issue 16): per chunk at most 0.5 us added and a ratio <= 1.05; per stream at most
100 us added with the OTel SDK; close() within 1.2x of the bare SDK's, p50 and p99.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import wrapt

from benchmarks import _common as c

PROVIDERS = ("openai", "anthropic", "ollama", "gcp.gemini", "mistral_ai")
MODEL = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
    "ollama": "llama3.2",
    "gcp.gemini": "gemini-2.0-flash",
    "mistral_ai": "mistral-small-latest",
}
MESSAGES = [{"role": "user", "content": "Write a long story about a guard and a stream."}]
GOAL_CHUNK_NS = 500.0
GOAL_CHUNK_RATIO = 1.05
GOAL_STREAM_US = 100.0
GOAL_STARTUP_MS = 20.0
GOAL_STARTUP_MB = 5.0
_cpu_ns = time.process_time_ns


# ------------------------------------------------------------------------- transport
class Replay:
    """A ``MockTransport`` handler: the first request goes to the live upstream and its body is
    recorded; every later request gets the recorded body from memory."""

    def __init__(self, module: Any, upstream_url: str) -> None:
        self.module, self.upstream_url = module, upstream_url
        self.stream_type = type(
            "Frames", (c.Frames, module.SyncByteStream, module.AsyncByteStream), {}
        )
        self.recorded: tuple[str, list[bytes]] | None = None

    def __call__(self, request: Any) -> Any:
        if self.recorded is None:
            self.recorded = self._record(request)
        content_type, frames = self.recorded
        return self.module.Response(
            200,
            headers={"content-type": content_type, "x-request-id": "bench"},
            stream=self.stream_type(frames),
        )

    def _record(self, request: Any) -> tuple[str, list[bytes]]:
        import httpx

        url = self.upstream_url + request.url.raw_path.decode("ascii")
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        body = request.read() if hasattr(request, "read") else request.content
        with (
            httpx.Client(timeout=30) as client,
            client.stream(request.method, url, headers=headers, content=body) as response,
        ):
            response.raise_for_status()
            content_type = response.headers["content-type"]
            raw = b"".join(response.iter_raw())
        sep = b"\n\n" if "event-stream" in content_type else b"\n"
        return content_type, [frame + sep for frame in raw.split(sep) if frame.strip()]


# ---------------------------------------------------------------------------- clients
def make_client(provider: str, is_async: bool, upstream_url: str) -> tuple[Any, Replay]:
    """An SDK client whose transport replays what the upstream answered its first request."""
    import httpx

    if provider in ("openai", "anthropic"):
        import httpx2

        replay = Replay(httpx2, upstream_url)
        http = (httpx2.AsyncClient if is_async else httpx2.Client)(
            transport=httpx2.MockTransport(replay)
        )
        if provider == "openai":
            import openai

            cls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
            return cls(
                base_url="http://mock/v1", api_key="k", max_retries=0, http_client=http
            ), replay
        import anthropic

        cls = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        return cls(base_url="http://mock", api_key="k", max_retries=0, http_client=http), replay
    replay = Replay(httpx, upstream_url)
    transport = httpx.MockTransport(replay)
    if provider == "ollama":
        import ollama

        cls = ollama.AsyncClient if is_async else ollama.Client
        return cls(host="http://mock", transport=transport), replay
    if provider == "gcp.gemini":
        from google import genai

        key = "httpx_async_client" if is_async else "httpx_client"
        http = (httpx.AsyncClient if is_async else httpx.Client)(transport=transport)
        client = genai.Client(api_key="k", http_options={"base_url": "http://mock", key: http})
        return (client.aio if is_async else client), replay
    from mistralai.client import Mistral

    http = (httpx.AsyncClient if is_async else httpx.Client)(transport=transport)
    kwargs = {"async_client": http} if is_async else {"client": http}
    return _Mistral(Mistral(api_key="k", server_url="http://mock", **kwargs), is_async), replay


class _Mistral:
    def __init__(self, sdk: Any, is_async: bool) -> None:
        self.sdk, self.is_async = sdk, is_async


def open_stream(provider: str, client: Any, tokens: int) -> Any:
    """The SDK call that opens a stream (a coroutine for async openai, anthropic, ollama,
    gemini; mistral's ``stream_async`` too)."""
    model = MODEL[provider]
    if provider == "openai":
        return client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=tokens, stream=True
        )
    if provider == "anthropic":
        return client.messages.create(
            model=model, messages=MESSAGES, max_tokens=tokens, stream=True
        )
    if provider == "ollama":
        return client.chat(
            model=model, messages=MESSAGES, stream=True, options={"num_predict": tokens}
        )
    if provider == "gcp.gemini":
        return client.models.generate_content_stream(
            model=model, contents="count slowly", config={"max_output_tokens": tokens}
        )
    chat = client.sdk.chat
    stream = chat.stream_async if client.is_async else chat.stream
    return stream(model=model, messages=MESSAGES, max_tokens=tokens)


class Floor(wrapt.ObjectProxy):  # type: ignore[misc]
    """The do-nothing guard: forwards iteration and returns. ``__iter__``/``__aiter__`` return
    the proxy (wrapt would forward them to the wrapped object, bypassing ``__next__``)."""

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return next(self.__wrapped__)

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        return await self.__wrapped__.__anext__()


# ------------------------------------------------------------------------------ cases
class Case:
    """One SDK in one mode, one stream shape: times a block of ``k`` streams per variant."""

    def __init__(self, provider: str, is_async: bool, tokens: int, k: int, url: str) -> None:
        self.provider, self.is_async, self.tokens, self.k = provider, is_async, tokens, k
        self.client, self.replay = make_client(provider, is_async, url)
        self.loop = asyncio.new_event_loop() if is_async else None
        self.chunks = 0
        self.receipts: list[int] = []

    def one(self, wrap: bool) -> tuple[int, int]:
        """(CPU ns, chunks) of one whole stream, ``create`` call included."""
        if self.loop is not None:
            return self.loop.run_until_complete(self._one_async(wrap))
        t0 = _cpu_ns()
        stream = open_stream(self.provider, self.client, self.tokens)
        n = 0
        for _ in Floor(stream) if wrap else stream:
            n += 1
        return _cpu_ns() - t0, n

    async def _one_async(self, wrap: bool) -> tuple[int, int]:
        t0 = _cpu_ns()
        stream = open_stream(self.provider, self.client, self.tokens)
        if asyncio.iscoroutine(stream):
            stream = await stream
        n = 0
        async for _ in Floor(stream) if wrap else stream:
            n += 1
        return _cpu_ns() - t0, n

    def block(self, wrap: bool = False) -> float:
        """CPU ns per stream over a block of ``k`` streams, their receipts included.

        The clock runs across the whole block and stops after ``streamguard.flush()``: the
        receipt writer's thread seals the guarded streams' receipts, and the process's CPU
        time counts that thread, so the work moved off the caller's thread is counted in full
        and none of it lands in the next block (a median of single streams would leave out
        the ones whose receipt was sealed outside their own window). Every variant flushes
        (a no-op without StreamGuard), so the sides differ only in what they run.
        """
        from streamguard import flush

        t0 = _cpu_ns()
        for _ in range(self.k):
            self.one(wrap)
        flush(30.0)
        return (_cpu_ns() - t0) / self.k

    def guarded_block(self) -> float:
        import streamguard

        kwargs = c.instrument_kwargs()
        sink = kwargs["sinks"][0]
        streamguard.instrument(**kwargs)
        _join_warmup()
        try:
            value = self.block()
        finally:
            streamguard.uninstrument()
        self.receipts.append(len(sink))
        c.clear_otel()
        return value

    def peer_block(self, instrumentor: Any) -> float:
        """A block with a peer's instrumentation on (OpenLLMetry, OTel openai-v2)."""
        instrumentor.instrument()
        try:
            return self.block()
        finally:
            instrumentor.uninstrument()
            c.clear_otel()

    def record(self) -> None:
        """The first (recorded) request, guarded; then the bare chunk count."""
        self.guarded_block_once()
        self.chunks = self.one(False)[1]

    def guarded_block_once(self) -> None:
        k, self.k = self.k, 1
        try:
            self.guarded_block()
        finally:
            self.k = k
            self.receipts.clear()

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


def _join_warmup() -> None:
    """instrument() loads the price tables on a thread of its own; its CPU is start-up's, not
    the streams': wait for it before the clock starts."""
    import threading

    for thread in threading.enumerate():
        if thread.name == "streamguard-warmup":
            thread.join()


def _figures(
    case: Case, res: dict[str, list[float]], shape: str, variants: dict[str, str]
) -> list[dict[str, Any]]:
    per_chunk = shape == "chunk"
    mode = "async" if case.is_async else "sync"
    scale = 1.0 / case.chunks if per_chunk else 1e-3  # ns per chunk, or us per stream
    unit = "CPU ns/chunk" if per_chunk else "CPU us/stream"
    bare = [v * scale for v in res["bare"]]
    out = []
    for variant, name in variants.items():
        fig = c.figure(
            f"floor.{shape}.{case.provider}.{mode}.{variant}.{c.OTEL_MODE}",
            f"{case.provider} {mode}, {'per chunk' if per_chunk else 'per 1-chunk stream'}",
            unit,
            baseline_name="bare SDK",
            baseline=bare,
            name=name,
            values=[v * scale for v in res[variant]],
            note=f"{case.chunks} chunks per stream, {case.k} stream(s) per block",
        )
        fig["variant"] = variant
        fig["chunks"] = case.chunks
        if variant == "guarded" and per_chunk:
            c.goal(fig, "added", "<=", GOAL_CHUNK_NS, "<= 0.5 us added per chunk")
            fig["goal_ratio"] = {"limit": GOAL_CHUNK_RATIO, "met": fig["ratio"] <= GOAL_CHUNK_RATIO}
        elif variant == "guarded" and c.OTEL_MODE == "sdk":
            c.goal(fig, "added", "<=", GOAL_STREAM_US, "<= 100 us added per stream")
        out.append(fig)
    return out


def _cases(providers: tuple[str, ...], skipped: dict[str, str]) -> list[tuple[str, Case]]:
    """Every (shape, case), each recorded from the live upstream once."""
    from streamguard.testing import Upstream

    # The per-chunk shape is 1,000 chunks in the quick run too: the figure includes the
    # ``create`` call, and over fewer chunks the per-stream cost would be most of it.
    shapes = (("chunk", 1000, 1), ("stream", 1, 5 if c.QUICK else 20))
    cases = []
    with Upstream(token_interval=0) as up:
        for provider in providers:
            for is_async in (False, True):
                for shape, n, k in shapes:
                    try:
                        case = Case(provider, is_async, n, k, up.url)
                        case.record()
                    except Exception as exc:  # an SDK not installed or not replayable here
                        key = f"{provider}.{'async' if is_async else 'sync'}.{shape}"
                        skipped[key] = repr(exc)
                        continue
                    cases.append((shape, case))
    return cases


def run() -> dict[str, Any]:
    c.setup_otel(c.OTEL_MODE, retain=False)
    reps = 2 if c.QUICK else 7
    figures: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    sg_name = f"StreamGuard (OTel {'API only' if c.OTEL_MODE == 'noop' else 'SDK'})"
    for shape, case in _cases(PROVIDERS, skipped):
        mode = "async" if case.is_async else "sync"
        try:
            res = c.interleave(
                {
                    "bare": case.block,
                    "floor": lambda case=case: case.block(wrap=True),
                    "guarded": case.guarded_block,
                },
                reps,
            )
        finally:
            case.close()
        if set(case.receipts) != {case.k}:
            raise RuntimeError(
                f"{case.provider} {mode}: expected {case.k} receipts per guarded block, got "
                f"{case.receipts}: the streams were not all guarded"
            )
        checks[f"{case.provider}.{mode}.{shape}"] = {"chunks_bare": case.chunks}
        variants = {"floor": "do-nothing wrapt.ObjectProxy", "guarded": sg_name}
        figures += _figures(case, res, shape, variants)
    if c.OTEL_MODE == "noop":
        figures += startup(reps)
    else:
        figures += close_latency(40 if c.QUICK else 200)  # closes per variant, per SDK and mode
    return {"figures": figures, "checks": checks, "skipped": skipped}


# ------------------------------------------------------------------------------- close
GOAL_CLOSE_RATIO = 1.2
CLOSE_BLOCK = 10  # streams per variant block: instrument() and uninstrument() run between blocks


def _live_client(provider: str, is_async: bool, up: Any) -> Any:
    """An SDK client of the loopback upstream (its own HTTP client, as an application's)."""
    if provider == "openai":
        import openai

        cls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
        return cls(base_url=up.url + "/v1", api_key="k", max_retries=0)
    if provider == "anthropic":
        import anthropic

        cls = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        return cls(base_url=up.url, api_key="k", max_retries=0)
    if provider == "ollama":
        import ollama

        return (ollama.AsyncClient if is_async else ollama.Client)(host=up.url)
    if provider == "gcp.gemini":
        from google import genai

        client = genai.Client(api_key="k", http_options={"base_url": up.url})
        return client.aio if is_async else client
    from mistralai.client import Mistral

    return _Mistral(Mistral(api_key="k", server_url=up.url + "/mistral"), is_async)


def _close_of(provider: str, stream: Any, is_async: bool) -> Any:
    """The application's close statement: ``close`` on the SDKs' stream objects, the
    generator's ``close``/``aclose`` for ollama and google-genai (plain generators)."""
    if provider in ("ollama", "gcp.gemini"):
        return stream.aclose if is_async else stream.close
    return stream.close


def close_latency(n: int) -> list[dict[str, Any]]:
    """Guarded ``close()`` vs bare ``close()``: how long the application's close statement takes.

    Against the loopback upstream in a process of its own (5 ms tokens), all five SDKs, sync
    and async, guarded as deployed (``streamguard.instrument()``): open a stream, read one
    chunk, time the close statement (wall clock: a latency). Blocks of ``CLOSE_BLOCK`` streams
    in the order B G L L G B ... (bare; guarded, in-memory receipt sink; guarded with a
    JSON-lines ledger file, fsync on), ``instrument()``/``uninstrument()`` between blocks. The
    receipt is sealed off the caller's thread: after the clock stops, each guarded stream's
    receipt is awaited (so every close is measured with the writer idle, and every receipt is
    counted). Goal (issue 16): p50 and p99 within 1.2x of the bare close.
    """
    import os
    import tempfile

    import streamguard
    from benchmarks._upstream_proc import RemoteUpstream

    tmp = tempfile.mkdtemp(prefix="sg-close-")
    extra = {"guarded": {}, "ledger": {"ledger_path": os.path.join(tmp, "receipts.jsonl")}}
    order = ("bare", "guarded", "ledger", "ledger", "guarded", "bare")
    blocks = max(1, n // (2 * CLOSE_BLOCK)) + 1  # the first round is a warm-up, dropped
    figures: list[dict[str, Any]] = []
    missing: list[str] = []
    with RemoteUpstream(token_interval=0.005, default_max_tokens=200) as up:
        for provider in PROVIDERS:
            for is_async in (False, True):
                client = _live_client(provider, is_async, up)
                loop = asyncio.new_event_loop() if is_async else None
                times: dict[str, list[float]] = {v: [] for v in order}

                def sync_one(out: list[float], client: Any = client, p: str = provider) -> None:
                    stream = open_stream(p, client, 200)
                    next(iter(stream))
                    close = _close_of(p, stream, False)
                    t0 = time.perf_counter_ns()
                    close()
                    out.append((time.perf_counter_ns() - t0) / 1e6)
                    handle = streamguard.handle_of(stream)
                    if handle is not None and handle.wait_receipt(5.0) is None:
                        missing.append(p)

                async def async_block(
                    out: list[float], client: Any = client, p: str = provider
                ) -> None:
                    for _ in range(CLOSE_BLOCK):
                        stream = open_stream(p, client, 200)
                        if asyncio.iscoroutine(stream):
                            stream = await stream
                        await stream.__aiter__().__anext__()
                        close = _close_of(p, stream, True)
                        t0 = time.perf_counter_ns()
                        await close()
                        out.append((time.perf_counter_ns() - t0) / 1e6)
                        handle = streamguard.handle_of(stream)
                        if handle is not None:
                            receipt = await asyncio.to_thread(handle.wait_receipt, 5.0)
                            if receipt is None:
                                missing.append(p)

                try:
                    for round_ in range(blocks):
                        for variant in order:
                            out: list[float] = [] if round_ == 0 else times[variant]
                            if variant != "bare":
                                streamguard.instrument(**c.instrument_kwargs(), **extra[variant])
                                _join_warmup()
                            try:
                                if loop is not None:
                                    loop.run_until_complete(async_block(out))
                                else:
                                    for _ in range(CLOSE_BLOCK):
                                        sync_one(out)
                            finally:
                                if variant != "bare":
                                    streamguard.uninstrument()
                                    c.clear_otel()
                finally:
                    if loop is not None:
                        loop.run_until_complete(_close_client(provider, client, True))
                        loop.run_until_complete(loop.shutdown_asyncgens())
                        loop.close()
                    else:
                        loop_ = asyncio.new_event_loop()
                        loop_.run_until_complete(_close_client(provider, client, False))
                        loop_.close()
                mode = "async" if is_async else "sync"
                for variant, name in (
                    ("guarded", "guarded close()"),
                    ("ledger", "guarded close(), ledger file with fsync"),
                ):
                    fig = c.latency_figure(
                        f"floor.close.{provider}.{mode}.{variant}.{c.OTEL_MODE}",
                        f"{provider} {mode}: the close() statement, one chunk read",
                        "ms",
                        baseline_name="bare close()",
                        baseline=times["bare"],
                        name=name,
                        values=times[variant],
                        note="loopback upstream (own process), 5 ms tokens; instrument(); "
                        "wall clock",
                    )
                    c.goal(fig, "ratio", "<=", GOAL_CLOSE_RATIO, "p99 <= 1.2x bare close()")
                    fig["goal_ratio_p50"] = {
                        "limit": GOAL_CLOSE_RATIO,
                        "met": (fig.get("ratio_p50") or 0.0) <= GOAL_CLOSE_RATIO,
                    }
                    fig["variant"] = variant
                    figures.append(fig)
    if missing:
        raise RuntimeError(f"{len(missing)} guarded close(s) got no receipt within 5 s")
    return figures


async def _close_client(provider: str, client: Any, is_async: bool) -> None:
    """Close an SDK client of ``_live_client`` (their close methods differ)."""
    if provider == "mistral_ai":
        sdk = client.sdk
        if is_async:
            await sdk.__aexit__(None, None, None)
        else:
            sdk.__exit__(None, None, None)
        return
    if provider == "ollama":
        http = client._client  # ollama 0.4 clients have no close() of their own
        if is_async:
            await http.aclose()
        else:
            http.close()
        return
    closer = getattr(client, "aclose" if provider == "gcp.gemini" and is_async else "close", None)
    if closer is not None:
        result = closer()
        if asyncio.iscoroutine(result):
            await result


# ------------------------------------------------------------------------------- peers
#: peer -> provider -> "module:Instrumentor". Each peer runs in a process of its own (the
#: driver's ``peers`` job), in a venv with the ``bench-peers`` extra.
PEERS = {
    "openllmetry": {
        "openai": "opentelemetry.instrumentation.openai:OpenAIInstrumentor",
        "anthropic": "opentelemetry.instrumentation.anthropic:AnthropicInstrumentor",
        "ollama": "opentelemetry.instrumentation.ollama:OllamaInstrumentor",
    },
    "otel-openai-v2": {"openai": "opentelemetry.instrumentation.openai_v2:OpenAIInstrumentor"},
}


def _span_counter() -> Any:
    """A span processor that counts ended spans: proves the peer instrumented the streams."""
    from opentelemetry.sdk.trace import SpanProcessor

    class SpanCounter(SpanProcessor):
        ended = 0

        def on_end(self, span: Any) -> None:
            self.ended += 1

    return SpanCounter()


def run_peer(peer: str, variant: str) -> dict[str, Any]:
    """One side of a peer comparison, in this process: ``bare`` (the bare SDK and the floor) or
    ``peer`` (the peer's instrumentation on for the whole process: OpenLLMetry's and openai-v2's
    ``uninstrument()`` leave wrappers behind, so a process never measures both). The driver
    (``benchmarks.peers``) alternates the two kinds of process, A B B A ..."""
    import importlib

    from opentelemetry import trace

    otel = c.setup_otel("sdk", retain=False)
    counter = _span_counter()
    provider = trace.get_tracer_provider()
    provider.add_span_processor(counter)  # type: ignore[attr-defined]
    skipped: dict[str, str] = {}
    cases = _cases(tuple(PEERS[peer]), skipped)
    if variant == "peer":
        for name in {PEERS[peer][case.provider] for _, case in cases}:
            module, _, cls = name.partition(":")
            getattr(importlib.import_module(module), cls)().instrument(tracer_provider=provider)
    values: dict[str, dict[str, float]] = {}
    spans: dict[str, int] = {}
    for shape, case in cases:
        key = f"{case.provider}.{'async' if case.is_async else 'sync'}.{shape}"
        variants = (
            {"bare": case.block}
            if variant == "peer"
            else {
                "bare": case.block,
                "floor": lambda case=case: case.block(wrap=True),
            }
        )
        before = counter.ended
        try:
            res = c.interleave(variants, 2 if c.QUICK else 3)
        finally:
            case.close()
        spans[key] = counter.ended - before
        if variant == "peer" and spans[key] == 0:
            raise RuntimeError(f"{peer} made no span for {key}: not measured")
        values[key] = {name: c.median(v) for name, v in res.items()}
        values[key]["chunks"] = case.chunks
        values[key]["k"] = case.k
        if otel is not None:
            otel.clear()
    return {"values": values, "skipped": skipped, "spans": spans}


def _main() -> int:
    """``python -m benchmarks.floor --peer NAME --variant bare|peer --result FILE [--quick]``."""
    import argparse
    import logging
    import warnings

    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor")
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--variant", choices=("bare", "peer"), required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    c.OTEL_MODE, c.QUICK = "sdk", args.quick
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    try:
        result = run_peer(args.peer, args.variant)
    except Exception:
        import traceback

        result = {"error": traceback.format_exc()}
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0 if "error" not in result else 1


# ---------------------------------------------------------------------------- start-up
_STARTUP = """
import json, resource, sys, time
t0, r0 = time.process_time_ns(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "guarded":
    import streamguard
    streamguard.instrument()
else:
    import wrapt
t1, r1 = time.process_time_ns(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sdks = ("openai", "anthropic", "ollama", "google.genai", "mistralai")
sdks = [m for m in sdks if m in sys.modules]
print(json.dumps({"ms": (t1 - t0) / 1e6, "mb": (r1 - r0) / 1024, "sdks": sdks}))
"""


def _startup_once(variant: str) -> dict[str, Any]:
    env = {"STREAMGUARD_SIGNING_KEY": "ab" * 32, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", _STARTUP, variant],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def startup(reps: int) -> list[dict[str, Any]]:
    """``import streamguard; streamguard.instrument()`` in a fresh process, every SDK installed
    and none imported; the baseline imports wrapt only (a proxy-based guard's least). CPU ms
    and the growth of the peak RSS (``ru_maxrss``) over the interpreter's own start-up."""
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "guarded": []}
    for rep in range(reps):
        for variant in ("bare", "guarded") if rep % 2 == 0 else ("guarded", "bare"):
            runs[variant].append(_startup_once(variant))
    out = []
    for metric, unit, limit in (
        ("ms", "CPU ms", GOAL_STARTUP_MS),
        ("mb", "MB RSS", GOAL_STARTUP_MB),
    ):
        fig = c.figure(
            f"floor.startup.{metric}",
            "import streamguard; instrument(), SDKs installed, not imported",
            unit,
            baseline_name="import wrapt",
            baseline=[r[metric] for r in runs["bare"]],
            name="StreamGuard",
            values=[r[metric] for r in runs["guarded"]],
            note="SDKs imported by instrument(): "
            + (", ".join(sorted({m for r in runs["guarded"] for m in r["sdks"]})) or "none"),
        )
        c.goal(fig, "value", "<", limit, f"< {limit:g} {unit.split()[-1]}")
        out.append(fig)
    return out


def profile(ids: list[str]) -> dict[str, Any]:
    """cProfile a guarded block of the per-chunk and per-stream figures that missed."""
    import streamguard
    from benchmarks._profile import profile as prof
    from streamguard.testing import Upstream

    c.setup_otel(c.OTEL_MODE, retain=False)
    out: dict[str, Any] = {}
    with Upstream(token_interval=0) as up:
        wanted = []
        for fid in ids:
            parts = fid.split(".")
            if parts[1] == "startup":
                continue
            shape, provider, mode = parts[1], parts[-4], parts[-3]
            n = 1000 if shape == "chunk" else 1
            case = Case(provider, mode == "async", n, 5 if shape == "chunk" else 100, up.url)
            case.record()
            wanted.append((fid, shape, case))
    for fid, shape, case in wanted:
        streamguard.instrument(**c.instrument_kwargs())
        _join_warmup()
        try:
            units = case.chunks * case.k if shape == "chunk" else case.k
            out[fid] = prof(case.block, units=units)
        finally:
            streamguard.uninstrument()
            case.close()
    return out


if __name__ == "__main__":
    sys.exit(_main())
