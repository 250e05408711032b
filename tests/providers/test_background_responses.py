"""openai background responses: ``responses.create(background=True, stream=True)``.

The upstream runs a background response as OpenAI does: generation goes on after the client
disconnects, until ``responses.cancel``. Each test runs the same request unguarded and
guarded in the same run: closing the stream leaves the response generating either way (so
the receipt claims no prevented tokens), and a policy stop makes StreamGuard cancel it
(``cancel_background``, default ``"policy"``), which the unguarded SDK never does.
"""

from __future__ import annotations

import gc
import importlib.util
import weakref
from typing import Any

import anthropic
import pytest

try:
    import openai
except ImportError:  # make compat's anthropic-only envs: the openai tests skip by name
    openai = None  # type: ignore[assignment]

import streamguard
from streamguard import Receipt, _runtime
from streamguard.exceptions import ConfigurationError
from streamguard.testing import InMemoryReceiptSink, RequestRecord, Upstream

TOKENS = 40  # the whole answer: 0.8 s at the upstream's 20 ms a token
HEADERS = {"x-upstream-tokens": str(TOKENS)}
READ = 5  # text deltas the consumer reads before it stops
CAP = 3  # instrument(max_output_tokens=CAP): a policy stop
# The Responses API is absent from the oldest openai releases (make compat): skip by name.
_NEEDS_OPENAI = pytest.mark.skipif(openai is None, reason="openai is not installed")
_NEEDS_RESPONSES = pytest.mark.skipif(
    openai is None or importlib.util.find_spec("openai.resources.responses") is None,
    reason="openai is not installed, or this release has no Responses API",
)


def _create(client: Any) -> Any:
    return client.responses.create(
        model="gpt-4o-mini",
        input="hi",
        stream=True,
        background=True,
        max_output_tokens=TOKENS,
        extra_headers=HEADERS,
    )


def _read_then_close(client: Any) -> None:
    stream = _create(client)
    deltas = 0
    try:
        for event in stream:
            deltas += event.type == "response.output_text.delta"
            if deltas == READ:
                break
    except streamguard.StreamCancelled:
        pass  # the guard's policy stop
    stream.close()


async def _aread_then_close(client: Any) -> None:
    stream = await _create(client)
    deltas = 0
    try:
        async for event in stream:
            deltas += event.type == "response.output_text.delta"
            if deltas == READ:
                break
    except streamguard.StreamCancelled:
        pass
    await stream.close()


def _read_then_close_with(up: Upstream) -> None:
    with _sync_client(up) as client:
        _read_then_close(client)


async def _aread_then_close_with(up: Upstream) -> None:
    async with _async_client(up) as client:
        await _aread_then_close(client)


def _latest(up: Upstream) -> RequestRecord:
    record = up.requests[-1]
    assert record.body.get("background") is True
    assert record.wait_done(5), "the background response neither completed nor was cancelled"
    return record


def _sync_client(up: Upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.openai_base_url, api_key="test", max_retries=0)


def _async_client(up: Upstream) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="test", max_retries=0)


def _check_left_running(record: RequestRecord) -> None:
    """The client left early; the server generated the whole answer anyway."""
    assert record.disconnected_ns is not None
    assert (record.outcome, record.tokens_generated) == ("completed", TOKENS)
    assert record.tokens_after(record.disconnected_ns) > 0


def _check_cancelled(record: RequestRecord) -> None:
    assert record.outcome == "cancelled"
    assert record.tokens_generated < TOKENS


def _receipt_view(receipts: list[Receipt]) -> dict[str, Any]:
    (receipt,) = receipts
    return {
        "reason": receipt.reason,
        "prevented": receipt.tokens.prevented_estimate,
        "billing": receipt.attributes.get("billing"),
        "background": receipt.attributes.get("background"),
    }


@_NEEDS_RESPONSES
def test_closing_a_background_stream_leaves_it_generating_and_prevents_nothing(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    _read_then_close_with(up)
    _check_left_running(_latest(up))  # without StreamGuard

    instrument_with()
    _read_then_close_with(up)
    _check_left_running(_latest(up))  # the same with StreamGuard: the consumer left
    assert _receipt_view(sink.wait_for(1)) == {
        "reason": "consumer_closed",
        "prevented": 0,
        "billing": "runs_on_server",
        "background": "running",
    }


@_NEEDS_RESPONSES
async def test_closing_an_async_background_stream_leaves_it_generating_and_prevents_nothing(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    await _aread_then_close_with(up)
    _check_left_running(_latest(up))

    instrument_with()
    await _aread_then_close_with(up)
    _check_left_running(_latest(up))
    assert _receipt_view(await sink.wait_for_async(1)) == {
        "reason": "consumer_closed",
        "prevented": 0,
        "billing": "runs_on_server",
        "background": "running",
    }


@_NEEDS_RESPONSES
def test_a_policy_stop_cancels_the_background_response(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    _read_then_close_with(up)
    _check_left_running(_latest(up))  # unguarded: nothing stops it

    instrument_with(max_output_tokens=CAP)
    _read_then_close_with(up)
    _check_cancelled(_latest(up))
    view = _receipt_view(sink.wait_for(1))
    assert view["prevented"] > 0  # cancelled: the stop did prevent the rest
    assert {k: view[k] for k in ("reason", "billing", "background")} == {
        "reason": "max_output_tokens",
        "billing": "stops_on_abort",
        "background": "cancelled",
    }


@_NEEDS_RESPONSES
async def test_a_policy_stop_cancels_the_async_background_response(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    await _aread_then_close_with(up)
    _check_left_running(_latest(up))

    instrument_with(max_output_tokens=CAP)
    await _aread_then_close_with(up)
    _check_cancelled(_latest(up))
    view = _receipt_view(await sink.wait_for_async(1))
    assert view["prevented"] > 0
    assert {k: view[k] for k in ("reason", "billing", "background")} == {
        "reason": "max_output_tokens",
        "billing": "stops_on_abort",
        "background": "cancelled",
    }


@_NEEDS_RESPONSES
def test_cancel_background_never_leaves_a_policy_stop_running(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    instrument_with(max_output_tokens=CAP, cancel_background="never")
    _read_then_close_with(up)
    _check_left_running(_latest(up))
    assert _receipt_view(sink.wait_for(1)) == {
        "reason": "max_output_tokens",
        "prevented": 0,
        "billing": "runs_on_server",
        "background": "running",
    }


@_NEEDS_RESPONSES
async def test_cancel_background_always_cancels_when_the_consumer_leaves(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    instrument_with(cancel_background="always")
    await _aread_then_close_with(up)
    _check_cancelled(_latest(up))
    view = _receipt_view(await sink.wait_for_async(1))
    assert (view["reason"], view["background"]) == ("consumer_closed", "cancelled")


def test_a_bad_cancel_background_fails_at_instrument(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="cancel_background"):
        streamguard.instrument(cancel_background="sometimes")
    monkeypatch.setenv("STREAMGUARD_CANCEL_BACKGROUND", "sometimes")
    with pytest.raises(ConfigurationError, match="STREAMGUARD_CANCEL_BACKGROUND"):
        streamguard.instrument()


# -- found by `make sdk-suites` (anthropic's tests/test_streaming.py) --------------------------


def _dict_stream(client: anthropic.Anthropic) -> Any:
    """A stream of plain dicts: a raw ``client.post(..., stream_cls=Stream[object])``."""
    return client.post(
        "/v1/messages",
        body={"model": "claude-test", "max_tokens": TOKENS, "messages": [], "stream": True},
        cast_to=object,
        options={"headers": HEADERS},
        stream=True,
        stream_cls=anthropic.Stream[object],
    )


def test_a_dropped_stream_of_plain_objects_is_closed_at_once(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    client = anthropic.Anthropic(base_url=up.anthropic_base_url, api_key="test", max_retries=0)
    outcomes: list[object] = []
    for guarded in (False, True):
        if guarded:
            instrument_with()
        gc.disable()  # the drop itself must close it, not a later collection
        try:
            stream = _dict_stream(client)
            assert isinstance(next(iter(stream)), dict)
            del stream
            record = up.requests[-1]
            outcomes.append(record.wait_done(2) and record.outcome)
        finally:
            gc.enable()
    client.close()
    # Guarded, the drop closes it at once; unguarded, whatever this SDK release does (shown).
    assert outcomes[1] == "disconnected", f"unguarded, guarded: {outcomes}"
    (receipt,) = sink.wait_for(1)
    assert receipt.reason == "consumer_closed"


def test_a_kept_fault_does_not_keep_what_its_frames_held() -> None:
    class Held:
        pass

    def fail(held: Held) -> None:
        raise RuntimeError("a fault")

    held = Held()
    alive = weakref.ref(held)
    try:
        fail(held)
    except RuntimeError as exc:
        _runtime.report_fault("test", exc)
    del held
    try:
        assert alive() is None
        ((where, kept),) = _runtime.faults
        assert (where, type(kept), str(kept)) == ("test", RuntimeError, "a fault")
    finally:
        del _runtime.faults[:]


@_NEEDS_OPENAI
async def test_anext_of_a_stream_nobody_holds_reads_its_first_event(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    # ``anext(await create(stream=True))``: the stream is dropped before the read is awaited;
    # the SDK's own awaitable keeps it alive, and so must the guard's.
    async def first_events() -> tuple[str, str]:
        async with (
            _async_client(up) as openai_client,
            anthropic.AsyncAnthropic(
                base_url=up.anthropic_base_url, api_key="test", max_retries=0
            ) as anthropic_client,
        ):
            chunk = await anext(
                await openai_client.chat.completions.create(
                    model="gpt-4o-mini", messages=[], stream=True, extra_headers=HEADERS
                )
            )
            event = await anext(
                await anthropic_client.messages.create(
                    model="claude-test",
                    max_tokens=TOKENS,
                    messages=[],
                    stream=True,
                    extra_headers=HEADERS,
                )
            )
            return type(chunk).__name__, event.type

    unguarded = await first_events()
    instrument_with()
    assert await first_events() == unguarded == ("ChatCompletionChunk", "message_start")
    assert {r.reason for r in await sink.wait_for_async(2)} == {"consumer_closed"}


async def test_an_async_raw_stream_response_dropped_unparsed_is_freed_at_once(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    # anthropic 2.x ends its own span when the body is collected: the guard must not keep the
    # HTTP response alive until its close runs on the loop.
    freed: list[bool] = []
    async with anthropic.AsyncAnthropic(
        base_url=up.anthropic_base_url, api_key="test", max_retries=0
    ) as client:
        for guarded in (False, True):
            if guarded:
                instrument_with()
            raw = await client.messages.with_raw_response.create(
                model="claude-test",
                max_tokens=TOKENS,
                messages=[],
                stream=True,
                extra_headers=HEADERS,
            )
            http = weakref.ref(raw.http_response)
            gc.disable()
            try:
                del raw
                freed.append(http() is None)
            finally:
                gc.enable()
    # Guarded, the response is freed whenever it is unguarded (the guard keeps it no longer).
    assert freed[1] >= freed[0], f"freed unguarded, guarded: {freed}"
    (receipt,) = await sink.wait_for_async(1)
    assert receipt.reason == "consumer_closed"


async def test_closing_an_async_message_stream_closes_its_raw_stream_once(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    # An observer of the raw stream's close (another instrumentation wraps it so) sees as many
    # closes with StreamGuard as without.
    counts = []
    async with anthropic.AsyncAnthropic(
        base_url=up.anthropic_base_url, api_key="test", max_retries=0
    ) as client:
        for guarded in (False, True):
            if guarded:
                instrument_with()
            closes: list[str] = []
            async with client.messages.stream(
                model="claude-test", max_tokens=TOKENS, messages=[], extra_headers=HEADERS
            ) as stream:
                raw = stream._raw_stream
                raw_close = raw.close

                async def counting_close(
                    raw_close: Any = raw_close, closes: list[str] = closes
                ) -> None:
                    closes.append("close")
                    await raw_close()

                raw.close = counting_close
                async for _ in stream.text_stream:
                    break
                await stream.close()
            counts.append(len(closes))
    # (anthropic 0.x's helper closes its HTTP response itself, never its raw stream: 0 and 0.)
    assert counts[1] == counts[0], f"raw-stream closes unguarded, guarded: {counts}"
    (receipt,) = await sink.wait_for_async(1)
    assert receipt.reason == "consumer_closed"
