"""4. Per-chunk overhead of the guard against the bare SDK, per provider, sync and async.

The upstream's bytes for one ~500-token answer are recorded once from ``streamguard.testing``'s
``Upstream`` (OpenAI chat SSE with the usage chunk, Anthropic Messages SSE, Ollama chat NDJSON)
and then served from memory, one wire frame per read, by the HTTP clients' ``MockTransport``
(``httpx2`` for openai and anthropic, ``httpx`` for ollama): no network, so what is measured is
the SDK's parsing plus, when guarded, the guard.

Guarded means ``streamguard.instrument()`` (all SDKs patched, as an application would run);
unguarded means after ``streamguard.uninstrument()``. Blocks of streams alternate between the
two. Both parse the same bytes: openai's body always carries the ``include_usage`` chunk that
``instrument()`` asks for (the guard hides it from the application; the bare SDK yields it).
Times are per stream, from the ``create`` call to the end of iteration, so the per-stream
costs (core, span, receipt) are spread over the chunks as they are in real use.

Goal: at most 5% added per chunk (ratio <= 1.05).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _common as c

GOAL_RATIO = 1.05
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "ollama": "llama3.2"}
MESSAGES = [{"role": "user", "content": "Write a long story about a guard and a stream."}]


# ------------------------------------------------------------------------ recording
def record_bodies(tokens: int) -> dict[str, tuple[str, list[bytes]]]:
    """provider -> (content type, wire frames) of one answer of ``tokens`` tokens."""
    import httpx

    from streamguard.testing import Upstream

    requests = {
        "openai": (
            "/v1/chat/completions",
            {
                "model": MODEL["openai"],
                "messages": MESSAGES,
                "stream": True,
                "max_tokens": tokens,
                "stream_options": {"include_usage": True},
            },
        ),
        "anthropic": (
            "/v1/messages",
            {
                "model": MODEL["anthropic"],
                "messages": MESSAGES,
                "stream": True,
                "max_tokens": tokens,
            },
        ),
        "ollama": (
            "/api/chat",
            {
                "model": MODEL["ollama"],
                "messages": MESSAGES,
                "stream": True,
                "options": {"num_predict": tokens},
            },
        ),
    }
    bodies: dict[str, tuple[str, list[bytes]]] = {}
    with Upstream(token_interval=0) as up, httpx.Client(base_url=up.url, timeout=30) as client:
        for provider, (path, payload) in requests.items():
            with client.stream("POST", path, json=payload) as response:
                response.raise_for_status()
                content_type = response.headers["content-type"]
                body = b"".join(response.iter_raw())
            sep = b"\n" if provider == "ollama" else b"\n\n"
            frames = [frame + sep for frame in body.split(sep) if frame]
            bodies[provider] = (content_type, frames)
    return bodies


def _handler(module: Any, content_type: str, frames: list[bytes]) -> Callable[[Any], Any]:
    stream_type = type("Frames", (c.Frames, module.SyncByteStream, module.AsyncByteStream), {})

    def handle(request: Any) -> Any:
        return module.Response(
            200,
            headers={"content-type": content_type, "x-request-id": "bench"},
            stream=stream_type(frames),
        )

    return handle


# -------------------------------------------------------------------------- clients
def _clients(bodies: dict[str, tuple[str, list[bytes]]], is_async: bool) -> dict[str, Any]:
    import anthropic
    import httpx
    import httpx2
    import ollama
    import openai

    def h2(provider: str) -> Any:
        transport = httpx2.MockTransport(_handler(httpx2, *bodies[provider]))
        return (httpx2.AsyncClient if is_async else httpx2.Client)(transport=transport)

    ollama_transport = httpx.MockTransport(_handler(httpx, *bodies["ollama"]))
    if is_async:
        return {
            "openai": openai.AsyncOpenAI(
                base_url="http://mock/v1", api_key="k", max_retries=0, http_client=h2("openai")
            ),
            "anthropic": anthropic.AsyncAnthropic(
                base_url="http://mock", api_key="k", max_retries=0, http_client=h2("anthropic")
            ),
            "ollama": ollama.AsyncClient(host="http://mock", transport=ollama_transport),
        }
    return {
        "openai": openai.OpenAI(
            base_url="http://mock/v1", api_key="k", max_retries=0, http_client=h2("openai")
        ),
        "anthropic": anthropic.Anthropic(
            base_url="http://mock", api_key="k", max_retries=0, http_client=h2("anthropic")
        ),
        "ollama": ollama.Client(host="http://mock", transport=ollama_transport),
    }


def _open_sync(provider: str, client: Any, tokens: int) -> Any:
    if provider == "openai":
        return client.chat.completions.create(
            model=MODEL[provider], messages=MESSAGES, max_tokens=tokens, stream=True
        )
    if provider == "anthropic":
        return client.messages.create(
            model=MODEL[provider], messages=MESSAGES, max_tokens=tokens, stream=True
        )
    return client.chat(
        model=MODEL[provider], messages=MESSAGES, stream=True, options={"num_predict": tokens}
    )


async def _open_async(provider: str, client: Any, tokens: int) -> Any:
    if provider == "openai":
        return await client.chat.completions.create(
            model=MODEL[provider], messages=MESSAGES, max_tokens=tokens, stream=True
        )
    if provider == "anthropic":
        return await client.messages.create(
            model=MODEL[provider], messages=MESSAGES, max_tokens=tokens, stream=True
        )
    return await client.chat(
        model=MODEL[provider], messages=MESSAGES, stream=True, options={"num_predict": tokens}
    )


def _stream_sync(provider: str, client: Any, tokens: int) -> tuple[int, int]:
    """(ns, chunks seen) for one whole stream."""
    t0 = time.perf_counter_ns()
    n = 0
    for _ in _open_sync(provider, client, tokens):
        n += 1
    return time.perf_counter_ns() - t0, n


async def _stream_async(provider: str, client: Any, tokens: int) -> tuple[int, int]:
    t0 = time.perf_counter_ns()
    n = 0
    async for _ in await _open_async(provider, client, tokens):
        n += 1
    return time.perf_counter_ns() - t0, n


# --------------------------------------------------------------------------- blocks
class _Guarded:
    """instrument() ... uninstrument() around a block, outside its clock; ``receipts`` is how
    many receipts the block's streams produced (one each, or the block was not guarded)."""

    receipts = 0

    def __enter__(self) -> None:
        import streamguard

        kwargs = c.instrument_kwargs()
        self._sink = kwargs["sinks"][0]
        streamguard.instrument(**kwargs)

    def __exit__(self, *exc: object) -> None:
        import streamguard

        streamguard.uninstrument()
        self.receipts = len(self._sink)
        c.clear_otel()


def _block_sync(provider: str, client: Any, tokens: int, k: int, frames: int) -> float:
    times = [_stream_sync(provider, client, tokens)[0] for _ in range(k)]
    return c.median(times) / frames


async def _block_async(provider: str, client: Any, tokens: int, k: int, frames: int) -> float:
    times = [(await _stream_async(provider, client, tokens))[0] for _ in range(k)]
    return c.median(times) / frames


class _Case:
    """One provider in one mode: a client, its body, and how to time a block of streams."""

    def __init__(
        self,
        provider: str,
        client: Any,
        frames: int,
        loop: asyncio.AbstractEventLoop | None,
        tokens: int,
        k: int,
    ) -> None:
        self.provider, self.client, self.frames = provider, client, frames
        self.loop, self.tokens, self.k = loop, tokens, k
        self.receipts: list[int] = []  # per guarded block

    def one_stream(self) -> tuple[int, int]:
        if self.loop is not None:
            coro = _stream_async(self.provider, self.client, self.tokens)
            return self.loop.run_until_complete(coro)
        return _stream_sync(self.provider, self.client, self.tokens)

    def block(self) -> float:
        """ns per wire frame: the median stream of a block of ``k``."""
        if self.loop is not None:
            coro = _block_async(self.provider, self.client, self.tokens, self.k, self.frames)
            return float(self.loop.run_until_complete(coro))
        return _block_sync(self.provider, self.client, self.tokens, self.k, self.frames)

    def guarded_block(self) -> float:
        guarded = _Guarded()
        with guarded:
            value = self.block()
        self.receipts.append(guarded.receipts)
        return value


def run() -> dict[str, Any]:
    import streamguard

    c.setup_otel(c.OTEL_MODE, retain=False)
    tokens = 100 if c.QUICK else 500
    reps = 3 if c.QUICK else 7
    k = 1 if c.QUICK else 3
    bodies = record_bodies(tokens)
    figures = []
    checks: dict[str, Any] = {}
    for is_async in (False, True):
        mode = "async" if is_async else "sync"
        loop = asyncio.new_event_loop() if is_async else None
        clients = _clients(bodies, is_async)
        try:
            for provider, client in clients.items():
                case = _Case(provider, client, len(bodies[provider][1]), loop, tokens, k)
                # The chunk count proves the bare SDK parsed the whole body.
                checks[f"{provider}.{mode}"] = {
                    "wire_frames": case.frames,
                    "chunks_bare": case.one_stream()[1],
                }
                res = c.interleave({"bare": case.block, "guarded": case.guarded_block}, reps)
                checks[f"{provider}.{mode}"]["receipts_per_guarded_block"] = sorted(
                    set(case.receipts)
                )
                if set(case.receipts) != {k}:
                    raise RuntimeError(
                        f"{provider} {mode}: expected {k} receipts per guarded block, "
                        f"got {case.receipts}: the streams were not all guarded"
                    )
                fig = c.figure(
                    f"sdk.{provider}.{mode}",
                    f"SDK per chunk, {provider} {mode}",
                    "ns/chunk",
                    baseline_name=f"bare {provider} SDK",
                    baseline=res["bare"],
                    name="instrument()ed SDK",
                    values=res["guarded"],
                    note=f"{case.frames} wire frames per stream, {k} stream(s) per block, "
                    f"in-memory transport",
                )
                figures.append(c.goal(fig, "ratio", "<=", GOAL_RATIO, "<= 5% added per chunk"))
        finally:
            if loop is not None:
                loop.run_until_complete(_aclose_all(clients))
                loop.close()
    if streamguard.is_instrumented():
        streamguard.uninstrument()
    return {"figures": figures, "checks": checks, "tokens_per_stream": tokens}


async def _aclose_all(clients: dict[str, Any]) -> None:
    for client in clients.values():
        close = getattr(client, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result


def profile(ids: list[str]) -> dict[str, Any]:
    """Profile the guarded streams whose goal was missed (per-chunk times)."""
    import streamguard
    from benchmarks._profile import profile as prof

    c.setup_otel(c.OTEL_MODE, retain=False)
    tokens = 200 if c.QUICK else 500
    n_streams = 5 if c.QUICK else 20
    bodies = record_bodies(tokens)
    out: dict[str, Any] = {}
    for fid in ids:
        _, provider, mode = fid.split(".")
        frames = len(bodies[provider][1])
        clients = _clients(bodies, mode == "async")
        client = clients[provider]
        streamguard.instrument(**c.instrument_kwargs())
        try:
            # One stream first: the first receipt of a process loads the pricing tables.
            if mode == "async":
                asyncio.run(_stream_async(provider, client, tokens))
            else:
                _stream_sync(provider, client, tokens)
            if mode == "async":

                async def many(client: Any = client, provider: str = provider) -> None:
                    for _ in range(n_streams):
                        await _stream_async(provider, client, tokens)

                out[fid] = prof(functools.partial(asyncio.run, many()), units=frames * n_streams)
            else:

                def many_sync(client: Any = client, provider: str = provider) -> None:
                    for _ in range(n_streams):
                        _stream_sync(provider, client, tokens)

                out[fid] = prof(many_sync, units=frames * n_streams)
        finally:
            streamguard.uninstrument()
    return out
