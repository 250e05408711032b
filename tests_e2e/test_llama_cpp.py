"""StreamGuard against a real inference engine: llama.cpp (llama-cpp-python's server) running a
random-weight LLaMA written at test time, driven by the real openai SDK over loopback HTTP.

Real LLM servers stop generating when the socket closes, not when the client stops reading
(PROVIDERS.md pitfall 11). So for every way a stream can end, each scenario runs twice, without
and with StreamGuard, and counts the tokens the engine sampled after the stop signal, from the
server's own per-token log (and its CPU time as a second witness). Without StreamGuard the
cases the SDK leaks run on to max_tokens; with it, at most the token in flight (<= 2) follows,
and there is exactly one receipt with the right reason. The numbers go to RESULTS.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import openai
import pytest

import streamguard
from streamguard import Receipt, StreamCancelled
from streamguard._money.estimate import estimate_tokens
from streamguard.testing.sinks import InMemoryReceiptSink

from ._llama_server import LlamaServer
from ._model import SPEC, WORD_PIECE
from ._results import Results, Row

pytestmark = pytest.mark.timeout(300)

MODEL = "random-llama"  # the server's --model_alias
PROMPT = [{"role": "user", "content": "Tell me a story."}]
MAX_TOKENS = 120  # a few seconds of generation: every cut leaves most of it ungenerated
CUT = 10  # text pieces a consumer reads before it stops
STALL = 0.5  # stall_timeout of the break-then-keep scenario
DEADLINE = 1.0  # deadline of the deadline scenario, at most: see deadline_for()
AFTER_STOP_BOUND = 2  # tokens the engine may still sample after the stop: the one in flight
CLOSE_BOUND_MS = 50.0  # DESIGN G1: stop signal to upstream closed
TIMER_SLACK_NS = 250_000_000  # a timer may fire this late on a busy machine
MS = 1_000_000


class Boom(Exception):
    """The application's own error, raised inside its loop over the stream."""


def text(chunk: Any) -> str:
    if not chunk.choices:
        return ""
    return chunk.choices[0].delta.content or ""


def mono(unix_ns: int) -> int:
    """A receipt time (Unix ns) on the monotonic clock of the server's token log."""
    return unix_ns - (time.time_ns() - time.monotonic_ns())


# --------------------------------------------------------------------------- scenarios


@dataclasses.dataclass
class Stop:
    """What a scenario did: the pieces it read, when it stopped (monotonic ns; None when it
    read to the end), and anything it keeps open, closed only after the measurement."""

    texts: list[str]
    t_stop: int | None
    kept: Any = None
    error: BaseException | None = None


@dataclasses.dataclass
class Ctx:
    client: Any
    server: LlamaServer
    guarded: bool
    deadline: float = DEADLINE

    def open(self) -> Any:
        return self.client.chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS, stream=True
        )


def take(stream: Any, n: int = CUT) -> list[str]:
    texts: list[str] = []
    for chunk in stream:
        if piece := text(chunk):
            texts.append(piece)
            if len(texts) == n:
                break
    return texts


async def atake(stream: Any, n: int = CUT) -> list[str]:
    texts: list[str] = []
    async for chunk in stream:
        if piece := text(chunk):
            texts.append(piece)
            if len(texts) == n:
                break
    return texts


def exhaust(c: Ctx) -> Stop:
    return Stop([piece for chunk in c.open() if (piece := text(chunk))], None)


def break_then_drop(c: Ctx) -> Stop:
    stream = c.open()
    texts = take(stream)
    t_stop = time.monotonic_ns()
    del stream  # openai's Stream sits in a reference cycle: without a guard, open until GC
    c.server.wait_quiet()
    return Stop(texts, t_stop)


def close(c: Ctx) -> Stop:
    stream = c.open()
    texts = take(stream)
    t_stop = time.monotonic_ns()
    stream.close()
    c.server.wait_quiet()
    return Stop(texts, t_stop)


def with_exit(c: Ctx) -> Stop:
    with c.open() as stream:
        texts = take(stream)
        t_stop = time.monotonic_ns()
    c.server.wait_quiet()
    return Stop(texts, t_stop)


def exception_in_loop(c: Ctx) -> Stop:
    texts: list[str] = []
    stops: list[int] = []
    try:
        for chunk in c.open():
            if piece := text(chunk):
                texts.append(piece)
                if len(texts) == CUT:
                    stops.append(time.monotonic_ns())
                    raise Boom
    except Boom:
        pass
    c.server.wait_quiet()
    return Stop(texts, stops[0])


def break_then_keep(c: Ctx) -> Stop:
    stream = c.open()
    texts = take(stream)
    t_stop = time.monotonic_ns()
    c.server.wait_quiet()  # the consumer keeps the stream and never reads again
    # The stop signal is the stall timer: STALL after the consumer's last read.
    return Stop(texts, t_stop + int(STALL * 1e9), kept=stream)


def deadline(c: Ctx) -> Stop:
    t_open = time.monotonic_ns()
    texts: list[str] = []
    error: BaseException | None = None
    try:
        for chunk in c.open():
            if piece := text(chunk):
                texts.append(piece)
    except StreamCancelled as exc:
        error = exc
    c.server.wait_quiet()
    return Stop(texts, t_open + int(c.deadline * 1e9), error=error)


def shutdown(c: Ctx) -> Stop:
    stream = c.open()
    texts = take(stream)
    t_stop = time.monotonic_ns()
    if c.guarded:
        streamguard.uninstrument()
    c.server.wait_quiet()
    error: BaseException | None = None
    try:
        next(stream)  # a guarded stream that was shut down says so
    except StreamCancelled as exc:
        error = exc
    return Stop(texts, t_stop, kept=stream, error=error)


async def async_break_then_drop(c: Ctx) -> Stop:
    stream = await c.open()
    texts = await atake(stream)
    t_stop = time.monotonic_ns()
    del stream
    await asyncio.to_thread(c.server.wait_quiet)
    return Stop(texts, t_stop)


async def async_close(c: Ctx) -> Stop:
    stream = await c.open()
    texts = await atake(stream)
    t_stop = time.monotonic_ns()
    await stream.close()
    await asyncio.to_thread(c.server.wait_quiet)
    return Stop(texts, t_stop)


async def async_task_cancelled(c: Ctx) -> Stop:
    stream = await c.open()
    texts: list[str] = []
    tenth = asyncio.Event()

    async def consumer() -> None:
        async for chunk in stream:
            if piece := text(chunk):
                texts.append(piece)
                if len(texts) == CUT:
                    tenth.set()
                    await asyncio.sleep(3600)  # the consumer's own work, cancelled

    task = asyncio.create_task(consumer())
    await asyncio.wait_for(tenth.wait(), 30)
    t_stop = time.monotonic_ns()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.to_thread(c.server.wait_quiet)
    return Stop(texts, t_stop, kept=stream)


@dataclasses.dataclass(frozen=True)
class Scenario:
    run: Callable[[Ctx], Stop] | Callable[[Ctx], Awaitable[Stop]]
    is_async: bool
    reason: str
    how: str
    options: dict[str, float] = dataclasses.field(default_factory=dict)
    timer: bool = False  # the guard's own timer is the stop signal (stall, deadline)


SCENARIOS: dict[str, Scenario] = {
    "exhaust": Scenario(exhaust, False, "completed", "reads to the end"),
    "break-then-drop": Scenario(
        break_then_drop, False, "consumer_closed", "`break`, then `del stream`"
    ),
    "close": Scenario(close, False, "consumer_closed", "`break`, then `stream.close()`"),
    "with-exit": Scenario(
        with_exit, False, "consumer_closed", "`break` inside `with create(...) as stream`"
    ),
    "exception-in-loop": Scenario(
        exception_in_loop, False, "consumer_closed", "raises inside `for chunk in create(...)`"
    ),
    "break-then-keep": Scenario(
        break_then_keep,
        False,
        "consumer_stalled",
        f"`break`, keeps `stream` (stall_timeout {STALL} s)",
        {"stall_timeout": STALL},
        timer=True,
    ),
    "deadline": Scenario(
        deadline,
        False,
        "deadline_exceeded",
        "reads on (deadline {deadline} s: a third of the generation)",
        {"deadline": DEADLINE},
        timer=True,
    ),
    "shutdown": Scenario(
        shutdown, False, "shutdown", "`break`, keeps `stream`; `streamguard.uninstrument()`"
    ),
    "async-break-then-drop": Scenario(
        async_break_then_drop, True, "consumer_closed", "async: `break`, then `del stream`"
    ),
    "async-close": Scenario(
        async_close, True, "consumer_closed", "async: `break`, then `await stream.close()`"
    ),
    "async-task-cancelled": Scenario(
        async_task_cancelled,
        True,
        "consumer_cancelled",
        "async: task cancelled inside the consumer's own code",
    ),
}
# Without a guard these run on to max_tokens (or until GC): the SDK alone never closes them.
LEAKS_WITHOUT_GUARD = {"break-then-keep", "deadline", "shutdown", "async-task-cancelled"}


def deadline_for(rate: dict[str, float]) -> float:
    """A deadline that falls about a third of the way through a MAX_TOKENS generation on this
    machine (1 s at most): on a fast machine the stream must not finish before it."""
    return round(min(DEADLINE, MAX_TOKENS / rate["tokens_per_s"] / 3), 2)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def client(llama_server: LlamaServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=llama_server.base_url, api_key="x", max_retries=0)
    yield c
    c.close()


@pytest.fixture
def server(llama_server: LlamaServer) -> LlamaServer:
    llama_server.wait_quiet()  # nothing left over from the previous test
    return llama_server


def one_receipt(sink: InMemoryReceiptSink) -> Receipt:
    sink.wait_for(1, timeout=5)
    time.sleep(0.2)  # a second receipt would have arrived by now
    receipts = sink.receipts
    assert len(receipts) == 1, f"expected exactly one receipt, got {len(receipts)}"
    return receipts[0]


# ---------------------------------------------------------------------------------- model


def test_model_runs_to_max_tokens_with_only_word_tokens(
    server: LlamaServer, client: openai.OpenAI, results: Results
) -> None:
    """Three completions of max_tokens=N, under three sampler settings (the server's defaults,
    greedy, every filter off at temperature 1), each stream exactly N word pieces."""
    n = 40
    samplers: list[dict[str, Any]] = [
        {},
        {"temperature": 0.0},
        {"temperature": 1.0, "top_p": 1.0, "extra_body": {"top_k": 0, "min_p": 0.0}},
    ]
    for sampler in samplers:
        first = server.token_count()
        pieces: list[str] = []
        finish: list[str | None] = []
        for chunk in client.chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=n, stream=True, **sampler
        ):
            if chunk.choices:
                pieces += [text(chunk)] if text(chunk) else []
                finish.append(chunk.choices[0].finish_reason)
        server.wait_quiet(0.3)
        assert len(pieces) == n, (sampler, pieces)
        assert all(WORD_PIECE.match(piece) for piece in pieces), pieces
        assert finish[-1] == "length", finish
        assert len(server.tokens_since(first)) == n  # the engine sampled exactly n tokens


@pytest.fixture(scope="module")
def rate(llama_server: LlamaServer, results: Results) -> dict[str, float]:
    """One completion of MAX_TOKENS, timed by the server's token log: tokens per second and
    server CPU per token. The timers of the scenarios are set from it."""
    llama_server.wait_quiet()
    first = llama_server.token_count()
    with openai.OpenAI(base_url=llama_server.base_url, api_key="x", max_retries=0) as c:
        stream = c.chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS, stream=True
        )
        pieces = [p for chunk in stream if (p := text(chunk))]
    llama_server.wait_quiet(0.3)
    stamps = llama_server.tokens_since(first)
    assert len(pieces) == len(stamps) == MAX_TOKENS
    span_s = (stamps[-1] - stamps[0]) / 1e9
    cpu_s = llama_server.cpu_at(stamps[-1]) - llama_server.cpu_at(stamps[0])
    results.rate = {
        "tokens": float(len(stamps)),
        "tokens_per_s": (len(stamps) - 1) / span_s,
        "cpu_ms_per_token": cpu_s * 1000 / (len(stamps) - 1),
        "cpu_share": cpu_s / span_s,
    }
    return results.rate


def test_model_generates_at_a_cpu_bound_rate(server: LlamaServer, rate: dict[str, float]) -> None:
    # llama.cpp's own count for the completion (it ended normally) matches the token log.
    runs = server.perf_eval_runs()
    assert runs, "llama.cpp printed no timings (llama_perf_context_print)"
    assert runs[-1] in (MAX_TOKENS - 1, MAX_TOKENS), runs[-1]
    # Real, CPU-bound generation: tens of tokens per second on one core, not a fake clock.
    assert 5 <= rate["tokens_per_s"] <= 200, rate
    assert rate["cpu_ms_per_token"] >= 2, rate
    assert SPEC.n_params > 10_000_000


def test_llama_cpp_ignores_include_usage_in_streams(
    server: LlamaServer, client: openai.OpenAI, results: Results
) -> None:
    """What the server does with ``stream_options={"include_usage": True}``, which StreamGuard
    adds to every OpenAI chat stream: llama-cpp-python 0.3 accepts and ignores it, so no usage
    chunk arrives and a guarded stream's receipt counts by estimate."""
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=PROMPT,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = [c.usage for c in chunks if getattr(c, "usage", None) is not None]
    results.notes.append(
        "llama-cpp-python's server "
        + ("reports" if usage else "ignores `stream_options.include_usage` and reports no")
        + " usage in streamed chat completions, so guarded receipts say usage_source "
        + ("`provider`." if usage else "`estimated` (tokens estimated from the text).")
    )
    assert not usage, "the server now reports streamed usage: expect usage_source 'provider'"


# ----------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("guarded", [False, True], ids=["without-streamguard", "streamguard"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_stream_end(
    name: str,
    guarded: bool,
    server: LlamaServer,
    sink: InMemoryReceiptSink,
    instrument: Callable[..., None],
    results: Results,
    rate: dict[str, float],
) -> None:
    scenario = SCENARIOS[name]
    deadline_s = deadline_for(rate)
    if guarded:
        options = dict(scenario.options)
        if "deadline" in options:
            options["deadline"] = deadline_s
        instrument(**options)
    if scenario.is_async:
        client: Any = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    else:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    ctx = Ctx(client, server, guarded, deadline_s)
    first = server.token_count()
    try:
        if scenario.is_async:
            stop = await scenario.run(ctx)  # type: ignore[misc]
        else:
            stop = await asyncio.to_thread(scenario.run, ctx)  # type: ignore[arg-type]
        t_quiet = time.monotonic_ns()
        await asyncio.to_thread(server.wait_quiet)
        stamps = server.tokens_since(first)
        receipt = await asyncio.to_thread(one_receipt, sink) if guarded else None
    finally:
        if scenario.is_async:
            await client.close()
        else:
            client.close()
    if stop.kept is not None and scenario.is_async:
        await stop.kept.close()
    elif stop.kept is not None:
        stop.kept.close()
    # Closing what the consumer kept, after the guard stopped it, adds no second receipt.
    assert len(sink.receipts) == (1 if guarded else 0), sink.receipts

    assert all(WORD_PIECE.match(piece) for piece in stop.texts), stop.texts
    t_signal = stop.t_stop
    if guarded and scenario.timer:
        assert receipt is not None
        assert receipt.times.stop_requested is not None
        t_fired = mono(receipt.times.stop_requested)
        assert t_signal is not None
        late = t_fired - t_signal
        assert -5 * MS <= late <= TIMER_SLACK_NS, f"the timer fired {late / MS:.0f} ms late"
        t_signal = t_fired
    after = 0 if t_signal is None else sum(1 for ns in stamps if ns > t_signal)
    cpu_ms = 0.0 if t_signal is None else (server.cpu_at(t_quiet) - server.cpu_at(t_signal)) * 1e3
    row = Row(
        scenario=name,
        how=scenario.how.format(deadline=deadline_s),
        guarded=guarded,
        max_tokens=MAX_TOKENS,
        server_tokens=len(stamps),
        after_stop=after,
        cpu_ms_after_stop=max(cpu_ms, 0.0),
    )
    if receipt is not None:
        row.reason = receipt.reason
        row.usage_source = receipt.tokens.usage_source
        row.produced = receipt.tokens.produced
        row.prevented_estimate = receipt.tokens.prevented_estimate
        times = receipt.times
        if times.stop_requested is not None and times.upstream_closed is not None:
            row.close_ms = (times.upstream_closed - times.stop_requested) / MS
    results.add(row)

    if name == "exhaust":
        assert len(stop.texts) == len(stamps) == MAX_TOKENS
    if not guarded:
        assert not sink.receipts
        if name in LEAKS_WITHOUT_GUARD:
            # The engine ran on to max_tokens: the bleed StreamGuard exists to stop.
            assert len(stamps) == MAX_TOKENS, len(stamps)
            assert after > AFTER_STOP_BOUND, after
        return

    assert receipt is not None
    assert after <= AFTER_STOP_BOUND, (
        f"{name}: the engine sampled {after} tokens after the stop signal "
        f"({len(stamps)} in all, max_tokens {MAX_TOKENS})"
    )
    expected_outcome = "completed" if name == "exhaust" else "cancelled"
    assert (receipt.provider, receipt.model, receipt.request_max_tokens) == (
        "openai",
        MODEL,
        MAX_TOKENS,
    )
    assert (receipt.outcome, receipt.reason) == (expected_outcome, scenario.reason)
    tokens = receipt.tokens
    assert tokens.produced >= tokens.committed >= tokens.consumed >= 0, tokens
    assert tokens.undelivered == tokens.produced - tokens.consumed, tokens
    # No usage from this server (see the include_usage test): counts are estimated from the
    # text, about 4 characters a token, so " w1000" counts 2 where the engine spent 1.
    assert tokens.usage_source == "estimated", tokens
    assert tokens.committed == sum(estimate_tokens(t) for t in stop.texts), tokens
    if name == "exhaust":
        assert tokens.produced == tokens.committed == tokens.consumed, tokens
        assert receipt.times.stop_requested is None
        results.notes.append(
            f"exhaust: the engine generated {len(stamps)} tokens; the receipt estimates "
            f"{tokens.produced} from the text (usage_source estimated)."
        )
        return
    # The prevented estimate (max_tokens minus produced, before any history) against what
    # the engine really did not generate.
    assert tokens.prevented_estimate == max(0, MAX_TOKENS - tokens.produced), tokens
    assert tokens.post_cutoff in (0, 1), tokens
    assert row.close_ms is not None
    assert row.close_ms <= CLOSE_BOUND_MS, f"{row.close_ms:.1f} ms from stop to upstream closed"
    if not scenario.timer:
        assert receipt.times.stop_requested is not None
        assert t_signal is not None
        lag_ms = (mono(receipt.times.stop_requested) - t_signal) / MS
        assert -5 <= lag_ms <= CLOSE_BOUND_MS, f"stop_requested {lag_ms:.1f} ms after the signal"
    if stop.error is not None or name in {"deadline", "shutdown"}:
        assert isinstance(stop.error, StreamCancelled), stop.error
        assert stop.error.reason == scenario.reason
