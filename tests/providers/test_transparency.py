"""DESIGN G6: with StreamGuard on, every SDK behaviour that does not stop a stream is unchanged.

Provider-neutral checks run over the whole matrix; each SDK's helpers (openai's ``.stream()``,
raw and streaming responses, the Responses API; anthropic's ``MessageStream``; ollama's
``generate``) are checked sync and async, each with exactly one receipt per stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import streamguard
from streamguard import Receipt, handle_of
from streamguard.testing import RequestRecord, expected_text

from . import _loops as loops
from ._adapters import MESSAGES, MODEL
from ._harness import (
    CUT,
    LONG,
    Case,
    check_consumer_closed,
    check_invariants,
    check_upstream_stopped,
    summary,
)

N = 5  # tokens of a short stream read to its end
NATURAL = {"x-upstream-tokens": str(N)}  # an answer that ends with "stop" before its limit


def check_completed(
    c: Case,
    record: RequestRecord,
    receipt: Receipt,
    *,
    max_tokens: int = N,
    operation: str | None = None,  # None: the adapter's
) -> None:
    assert record.output_tokens == N
    assert summary(receipt) == c.expected(
        outcome="completed",
        reason="completed",
        category=None,
        max_tokens=max_tokens,
        produced=N,
        committed=N,
        consumed=N,
        exact_usage=True,
        input_tokens=record.input_tokens,
        operation=operation,
    )
    check_invariants(receipt)


def check_closed_now(c: Case, t_stop: int, *, committed: int, consumed: int) -> Receipt:
    """The close returned with the receipt sealed, and the upstream saw it within 50 ms."""
    receipts = c.sink.receipts
    assert len(receipts) == 1, "close() returned before the receipt was sealed"
    check_consumer_closed(
        c, c.finished(), receipts[0], t_stop, committed=committed, consumed=consumed
    )
    return receipts[0]


# -------------------------------------------------------------------- every provider


async def test_guarded_stream_is_still_an_instance_of_the_sdk_type(
    case: Case, instrumented: None
) -> None:
    def sync(c: Case) -> None:
        stream = c.open(N)
        assert isinstance(stream, c.adapter.stream_types(False))
        assert handle_of(stream) is not None
        assert "".join(c.text(chunk) for chunk in stream) == expected_text(N)
        check_completed(c, c.finished(), c.receipt())

    async def async_(c: Case) -> None:
        stream = await c.open(N)
        assert isinstance(stream, c.adapter.stream_types(True))
        assert handle_of(stream) is not None
        assert "".join([c.text(chunk) async for chunk in stream]) == expected_text(N)
        check_completed(c, await c.afinished(), await c.areceipt())

    await case.run(sync, async_)


async def test_with_returns_the_guard_and_iteration_through_it_is_counted(
    case: Case, instrumented: None
) -> None:
    if not case.adapter.supports_with:
        pytest.skip(f"{case.adapter.name} streams are generators: no with statement")

    def sync(c: Case) -> None:
        opened = c.open(N)
        with opened as stream:
            assert stream is opened
            assert handle_of(stream) is not None
            texts = [c.text(chunk) for chunk in stream]
        assert "".join(texts) == expected_text(N)
        check_completed(c, c.finished(), c.receipt())

    async def async_(c: Case) -> None:
        opened = await c.open(N)
        async with opened as stream:
            assert stream is opened
            assert handle_of(stream) is not None
            texts = [c.text(chunk) async for chunk in stream]
        assert "".join(texts) == expected_text(N)
        check_completed(c, await c.afinished(), await c.areceipt())

    await case.run(sync, async_)


async def test_response_attribute_is_the_sdk_http_response(case: Case, instrumented: None) -> None:
    if not case.adapter.has_response:
        pytest.skip(f"{case.adapter.name} streams are generators: no .response")

    def sync(c: Case) -> None:
        stream = c.open(N)
        response = stream.response
        assert response.status_code == 200
        assert response.headers["x-request-id"] == f"up-{c.record().id}"
        for _ in stream:
            pass
        assert c.receipt().outcome == "completed"

    async def async_(c: Case) -> None:
        stream = await c.open(N)
        response = stream.response
        assert response.status_code == 200
        assert response.headers["x-request-id"] == f"up-{c.record().id}"
        async for _ in stream:
            pass
        assert (await c.areceipt()).outcome == "completed"

    await case.run(sync, async_)


# ---------------------------------------------------------------------------- openai


def chat_kwargs(max_tokens: int = N, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, **extra}


def chat_stream(client: Any) -> Any:
    """openai's chat ``.stream()`` helper; openai 1.40 (the oldest supported) has it only under
    ``beta``."""
    completions = client.chat.completions
    return getattr(completions, "stream", None) or client.beta.chat.completions.stream


def skip_without_responses_api(c: Case) -> None:
    if not hasattr(c.client, "responses"):
        pytest.skip(f"openai {c.adapter.sdk().__version__} has no Responses API")


async def test_openai_stream_helper_events_and_final_completion(
    openai_case: Case, instrumented: None
) -> None:
    # A finish_reason "length" would make get_final_completion() raise LengthFinishReasonError,
    # so the answer ends on its own (x-upstream-tokens) before the larger limit.
    kwargs = chat_kwargs(20, extra_headers=NATURAL)

    def sync(c: Case) -> None:
        with chat_stream(c.client)(**kwargs) as stream:
            events = list(stream)
            final = stream.get_final_completion()
        check_helper(c, events, final, c.finished(), c.receipt())

    async def async_(c: Case) -> None:
        async with chat_stream(c.client)(**kwargs) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_completion()
        check_helper(c, events, final, await c.afinished(), await c.areceipt())

    def check_helper(
        c: Case, events: list[Any], final: Any, record: RequestRecord, receipt: Receipt
    ) -> None:
        deltas = [event.delta for event in events if event.type == "content.delta"]
        assert "".join(deltas) == expected_text(N)
        assert events[-1].type == "content.done"
        choice = final.choices[0]
        assert (choice.message.content, choice.finish_reason) == (expected_text(N), "stop")
        assert final.usage is None  # the caller did not ask for usage: the injected chunk is hidden
        check_completed(c, record, receipt, max_tokens=20)

    await openai_case.run(sync, async_)


@pytest.mark.parametrize("how", ["close", "with-exit"])
async def test_openai_stream_helper_close_is_routed_through_the_guard(
    openai_case: Case, instrumented: None, how: str
) -> None:
    # The helper's close() closes the response it captured, not the raw stream (PROVIDERS.md
    # pitfall 6): the receipt must still be sealed by the time close() (or the with) returns.
    def sync(c: Case) -> None:
        with chat_stream(c.client)(**chat_kwargs(LONG)) as stream:
            deltas = 0
            for event in stream:
                deltas += event.type == "content.delta" and event.delta != ""
                if deltas == CUT:
                    break
            t_stop = time.monotonic_ns()
            if how == "close":
                stream.close()
        check_closed_now(c, t_stop, committed=CUT, consumed=CUT - 1)

    async def async_(c: Case) -> None:
        async with chat_stream(c.client)(**chat_kwargs(LONG)) as stream:
            deltas = 0
            async for event in stream:
                deltas += event.type == "content.delta" and event.delta != ""
                if deltas == CUT:
                    break
            t_stop = time.monotonic_ns()
            if how == "close":
                await stream.close()
        check_closed_now(c, t_stop, committed=CUT, consumed=CUT - 1)

    await openai_case.run(sync, async_)


async def test_openai_with_raw_response_parse_gives_a_guarded_stream(
    openai_case: Case, instrumented: None
) -> None:
    openai = openai_case.adapter.sdk()

    def sync(c: Case) -> None:
        raw = c.client.chat.completions.with_raw_response.create(**chat_kwargs(), stream=True)
        assert raw.headers["x-request-id"] == f"up-{c.record().id}"
        stream = raw.parse()
        assert isinstance(stream, openai.Stream)
        assert handle_of(stream) is not None
        assert "".join(c.text(chunk) for chunk in stream) == expected_text(N)
        check_completed(c, c.finished(), c.receipt())

    async def async_(c: Case) -> None:
        raw = await c.client.chat.completions.with_raw_response.create(**chat_kwargs(), stream=True)
        stream = raw.parse()  # with_raw_response gives a LegacyAPIResponse: parse() is sync
        assert isinstance(stream, openai.AsyncStream)
        assert handle_of(stream) is not None
        assert "".join([c.text(chunk) async for chunk in stream]) == expected_text(N)
        check_completed(c, await c.afinished(), await c.areceipt())

    await openai_case.run(sync, async_)


async def test_openai_raw_response_dropped_unparsed_closes_upstream_within_50ms(
    openai_case: Case, instrumented: None
) -> None:
    def sync(c: Case) -> int:
        raw = c.client.chat.completions.with_raw_response.create(**chat_kwargs(LONG), stream=True)
        t_stop = time.monotonic_ns()
        del raw
        return t_stop

    async def async_(c: Case) -> int:
        create = c.client.chat.completions.with_raw_response.create
        raw = await create(**chat_kwargs(LONG), stream=True)
        t_stop = time.monotonic_ns()
        del raw
        return t_stop

    t_stop = await openai_case.run(sync, async_)
    record, receipt = await openai_case.settled()
    check_upstream_stopped(record, t_stop)
    assert (receipt.reason, receipt.tokens.produced) == ("consumer_closed", 0)


async def test_openai_with_streaming_response_gives_a_guarded_stream(
    openai_case: Case, instrumented: None
) -> None:
    def sync(c: Case) -> None:
        create = c.client.chat.completions.with_streaming_response.create
        with create(**chat_kwargs(), stream=True) as response:
            stream = response.parse()
            assert handle_of(stream) is not None
            texts = [c.text(chunk) for chunk in stream]
        assert "".join(texts) == expected_text(N)
        check_completed(c, c.finished(), c.receipt())

    async def async_(c: Case) -> None:
        create = c.client.chat.completions.with_streaming_response.create
        async with create(**chat_kwargs(), stream=True) as response:
            stream = await response.parse()
            assert handle_of(stream) is not None
            texts = [c.text(chunk) async for chunk in stream]
        assert "".join(texts) == expected_text(N)
        check_completed(c, await c.afinished(), await c.areceipt())

    await openai_case.run(sync, async_)


async def test_openai_non_streaming_create_passes_through_without_a_receipt(
    openai_case: Case, instrumented: None
) -> None:
    openai = openai_case.adapter.sdk()

    def sync(c: Case) -> Any:
        return c.client.chat.completions.create(**chat_kwargs())

    async def async_(c: Case) -> Any:
        return await c.client.chat.completions.create(**chat_kwargs())

    completion = await openai_case.run(sync, async_)
    assert type(completion) is openai.types.chat.ChatCompletion
    assert completion.choices[0].message.content == expected_text(N)
    (record,) = openai_case.up.requests
    assert "stream_options" not in record.body
    streamguard.uninstrument()  # flushes every receipt there is
    assert openai_case.sink.receipts == []


async def test_openai_injected_usage_chunk_is_hidden_from_the_application(
    openai_case: Case, instrumented: None
) -> None:
    def sync(c: Case) -> list[Any]:
        return list(c.client.chat.completions.create(**chat_kwargs(), stream=True))

    async def async_(c: Case) -> list[Any]:
        stream = await c.client.chat.completions.create(**chat_kwargs(), stream=True)
        return [chunk async for chunk in stream]

    chunks = await openai_case.run(sync, async_)
    assert [chunk for chunk in chunks if not chunk.choices] == []
    assert chunks[-1].choices[0].finish_reason == "length"
    record, receipt = await openai_case.settled()
    assert record.body["stream_options"] == {"include_usage": True}  # injected for the receipt
    check_completed(openai_case, record, receipt)


async def test_openai_usage_chunk_the_caller_asked_for_is_delivered(
    openai_case: Case, instrumented: None
) -> None:
    kwargs = chat_kwargs(stream=True, stream_options={"include_usage": True})

    def sync(c: Case) -> list[Any]:
        return list(c.client.chat.completions.create(**kwargs))

    async def async_(c: Case) -> list[Any]:
        return [chunk async for chunk in await c.client.chat.completions.create(**kwargs)]

    chunks = await openai_case.run(sync, async_)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == N
    check_completed(openai_case, *await openai_case.settled())


async def test_openai_responses_stream_exhausted_has_exact_usage(
    openai_case: Case, instrumented: None
) -> None:
    skip_without_responses_api(openai_case)
    openai = openai_case.adapter.sdk()
    kwargs = {"model": MODEL, "input": "count slowly", "max_output_tokens": N, "stream": True}

    def sync(c: Case) -> list[Any]:
        stream = c.client.responses.create(**kwargs)
        assert isinstance(stream, openai.Stream)
        return list(stream)

    async def async_(c: Case) -> list[Any]:
        stream = await c.client.responses.create(**kwargs)
        assert isinstance(stream, openai.AsyncStream)
        return [event async for event in stream]

    events = await openai_case.run(sync, async_)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == expected_text(N)
    assert events[-1].type == "response.completed"
    check_completed(openai_case, *await openai_case.settled())


async def test_openai_responses_stream_helper_final_response(
    openai_case: Case, instrumented: None
) -> None:
    skip_without_responses_api(openai_case)
    kwargs = {"model": MODEL, "input": "count slowly", "max_output_tokens": N}

    def sync(c: Case) -> Any:
        with c.client.responses.stream(**kwargs) as stream:
            return stream.get_final_response()

    async def async_(c: Case) -> Any:
        async with c.client.responses.stream(**kwargs) as stream:
            return await stream.get_final_response()

    final = await openai_case.run(sync, async_)
    assert final.output_text == expected_text(N)
    check_completed(openai_case, *await openai_case.settled())


async def test_openai_status_error_is_the_same_sdk_exception_guarded_or_not(
    openai_case: Case, instrument_with: Callable[..., None]
) -> None:
    kwargs = chat_kwargs(stream=True, extra_headers={"x-upstream-fault": "http_error;status=500"})
    errors: list[Exception] = []

    def sync(c: Case) -> None:
        with pytest.raises(Exception) as info:  # noqa: PT011 (compared below)
            c.client.chat.completions.create(**kwargs)
        errors.append(info.value)

    async def async_(c: Case) -> None:
        with pytest.raises(Exception) as info:  # noqa: PT011 (compared below)
            await c.client.chat.completions.create(**kwargs)
        errors.append(info.value)

    await openai_case.run(sync, async_)
    instrument_with()
    await openai_case.run(sync, async_)
    plain, guarded = errors
    assert (type(guarded), str(guarded), getattr(guarded, "status_code", None)) == (
        type(plain),
        str(plain),
        getattr(plain, "status_code", None),
    )
    assert getattr(plain, "status_code", None) == 500
    receipt = await openai_case.areceipt()
    assert (receipt.outcome, receipt.reason) == ("failed", "upstream_error")


# ------------------------------------------------------------------------- anthropic


def message_kwargs(max_tokens: int = N) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": max_tokens, "messages": MESSAGES}


async def test_anthropic_message_stream_text_stream_and_final_message(
    anthropic_case: Case, instrumented: None
) -> None:
    def sync(c: Case) -> tuple[str, Any]:
        with c.client.messages.stream(**message_kwargs()) as stream:
            assert handle_of(stream._raw_stream) is not None  # the guard is inside the helper
            return "".join(stream.text_stream), stream.get_final_message()

    async def async_(c: Case) -> tuple[str, Any]:
        async with c.client.messages.stream(**message_kwargs()) as stream:
            assert handle_of(stream._raw_stream) is not None
            text = "".join([t async for t in stream.text_stream])
            return text, await stream.get_final_message()

    text, message = await anthropic_case.run(sync, async_)
    record, receipt = await anthropic_case.settled()
    assert text == expected_text(N)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (record.input_tokens, N)
    assert message.stop_reason == "max_tokens"
    check_completed(anthropic_case, record, receipt)


async def test_anthropic_message_stream_until_done(
    anthropic_case: Case, instrumented: None
) -> None:
    def sync(c: Case) -> Any:
        with c.client.messages.stream(**message_kwargs()) as stream:
            stream.until_done()
            return stream.get_final_message()

    async def async_(c: Case) -> Any:
        async with c.client.messages.stream(**message_kwargs()) as stream:
            await stream.until_done()
            return await stream.get_final_message()

    message = await anthropic_case.run(sync, async_)
    assert message.content[0].text == expected_text(N)
    check_completed(anthropic_case, *await anthropic_case.settled())


async def test_anthropic_beta_message_stream_is_guarded(
    anthropic_case: Case, instrumented: None
) -> None:
    if not hasattr(anthropic_case.client.beta.messages, "stream"):
        pytest.skip(f"anthropic {anthropic_case.adapter.sdk().__version__} has no beta .stream()")

    def sync(c: Case) -> Any:
        with c.client.beta.messages.stream(**message_kwargs()) as stream:
            return stream.get_final_message()

    async def async_(c: Case) -> Any:
        async with c.client.beta.messages.stream(**message_kwargs()) as stream:
            return await stream.get_final_message()

    message = await anthropic_case.run(sync, async_)
    assert message.usage.output_tokens == N
    check_completed(anthropic_case, *await anthropic_case.settled())


@pytest.mark.parametrize("how", ["close", "with-exit"])
async def test_anthropic_message_stream_close_is_routed_through_the_guard(
    anthropic_case: Case, instrumented: None, how: str
) -> None:
    def sync(c: Case) -> None:
        with c.client.messages.stream(**message_kwargs(LONG)) as stream:
            for texts, _ in enumerate(stream.text_stream, 1):
                if texts == CUT:
                    break
            t_stop = time.monotonic_ns()
            if how == "close":
                stream.close()
        check_closed_now(c, t_stop, committed=CUT, consumed=CUT - 1)

    async def async_(c: Case) -> None:
        async with c.client.messages.stream(**message_kwargs(LONG)) as stream:
            texts = 0
            async for _ in stream.text_stream:
                texts += 1
                if texts == CUT:
                    break
            t_stop = time.monotonic_ns()
            if how == "close":
                await stream.close()
        check_closed_now(c, t_stop, committed=CUT, consumed=CUT - 1)

    await anthropic_case.run(sync, async_)


# ---------------------------------------------------------------------------- ollama


async def test_ollama_generate_stream_is_guarded_with_exact_usage(
    ollama_case: Case, instrumented: None
) -> None:
    kwargs = {"model": MODEL, "prompt": "count slowly", "stream": True}
    kwargs["options"] = {"num_predict": N}

    def sync(c: Case) -> str:
        stream = c.client.generate(**kwargs)
        assert handle_of(stream) is not None
        return "".join(part.response for part in stream)

    async def async_(c: Case) -> str:
        stream = await c.client.generate(**kwargs)
        assert handle_of(stream) is not None
        return "".join([part.response async for part in stream])

    assert await ollama_case.run(sync, async_) == expected_text(N)
    record, receipt = await ollama_case.settled()
    check_completed(ollama_case, record, receipt, operation="text_completion")


# ------------------------------------------- guarded vs unguarded, in the same run (issue 15)


def chunk_view(chunk: Any) -> tuple[Any, ...]:
    """What the application reads of a chat chunk (ids and timestamps differ per request)."""
    usage = chunk.usage.model_dump() if chunk.usage is not None else None
    if not chunk.choices:
        return ("usage-only", usage)
    choice = chunk.choices[0]
    return (choice.delta.content, choice.finish_reason, usage)


@pytest.mark.parametrize(
    "stream_options",
    [None, {"include_usage": True}, {"include_usage": False}],
    ids=["not-set", "usage-asked", "usage-refused"],
)
async def test_openai_application_sees_the_chunks_it_sees_without_streamguard(
    openai_case: Case, instrument_with: Any, stream_options: dict[str, bool] | None
) -> None:
    # Only the usage chunk StreamGuard itself caused (include_usage injected) is hidden.
    extra = {} if stream_options is None else {"stream_options": stream_options}
    kwargs = chat_kwargs(stream=True, **extra)

    def sync(c: Case) -> list[Any]:
        return [chunk_view(chunk) for chunk in c.client.chat.completions.create(**kwargs)]

    async def async_(c: Case) -> list[Any]:
        stream = await c.client.chat.completions.create(**kwargs)
        return [chunk_view(chunk) async for chunk in stream]

    plain = await openai_case.run(sync, async_)
    instrument_with()
    openai_case.up.reset()
    guarded = await openai_case.run(sync, async_)
    assert guarded == plain
    assert len(plain) >= N
    _, receipt = await openai_case.settled()
    source = "estimated" if stream_options == {"include_usage": False} else "provider"
    assert (receipt.outcome, receipt.tokens.usage_source) == ("completed", source)


async def test_openai_stream_helper_final_usage_is_the_unguarded_one(
    openai_case: Case, instrument_with: Any
) -> None:
    kwargs = chat_kwargs(20, extra_headers=NATURAL, stream_options={"include_usage": True})

    def sync(c: Case) -> tuple[int, Any]:
        with chat_stream(c.client)(**kwargs) as stream:
            events = list(stream)
            return len(events), stream.get_final_completion().usage

    async def async_(c: Case) -> tuple[int, Any]:
        async with chat_stream(c.client)(**kwargs) as stream:
            events = [event async for event in stream]
            return len(events), (await stream.get_final_completion()).usage

    plain = await openai_case.run(sync, async_)
    instrument_with()
    guarded = await openai_case.run(sync, async_)
    assert guarded == plain
    assert plain[1] is not None


async def test_anthropic_helper_keeps_its_exact_type(
    anthropic_case: Case, instrument_with: Any
) -> None:
    def sync(c: Case) -> list[type]:
        types = []
        with c.client.messages.stream(**message_kwargs()) as stream:
            types.append(type(stream))
            stream.until_done()
        if hasattr(c.client.beta.messages, "stream"):
            with c.client.beta.messages.stream(**message_kwargs()) as stream:
                types.append(type(stream))
                stream.until_done()
        return types

    async def async_(c: Case) -> list[type]:
        types = []
        async with c.client.messages.stream(**message_kwargs()) as stream:
            types.append(type(stream))
            await stream.until_done()
        if hasattr(c.client.beta.messages, "stream"):
            async with c.client.beta.messages.stream(**message_kwargs()) as stream:
                types.append(type(stream))
                await stream.until_done()
        return types

    plain = await anthropic_case.run(sync, async_)
    instrument_with()
    assert await anthropic_case.run(sync, async_) == plain


def _anthropic_spans(c: Case) -> tuple[Any, Any]:
    """A client of the case's kind whose own OTel spans (anthropic 2.x) go to a fresh exporter."""
    import inspect

    anthropic = c.adapter.sdk()
    cls = anthropic.AsyncAnthropic if c.is_async else anthropic.Anthropic
    if "open_telemetry" not in inspect.signature(cls.__init__).parameters:
        pytest.skip(f"anthropic {anthropic.__version__} has no spans of its own")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = cls(
        base_url=c.up.anthropic_base_url,
        api_key="test",
        max_retries=0,
        open_telemetry={"tracer_provider": provider},
    )
    return client, exporter


@pytest.mark.parametrize("how", ["close", "with-exit", "drop"])
async def test_anthropic_own_span_ends_as_it_does_without_streamguard(
    anthropic_case: Case, instrument_with: Any, how: str
) -> None:
    # The guard's close runs the SDK's own close (after shutting the socket), so the SDK's
    # call span ends, with the status it has without StreamGuard.
    client, exporter = _anthropic_spans(anthropic_case)
    kwargs = {**message_kwargs(LONG), "stream": True}

    def sync(c: Case) -> list[tuple[str, Any, bool, list[str]]]:
        stream = client.messages.create(**kwargs)
        if how == "with-exit":
            with stream:
                c.take(stream)
        else:
            c.take(stream)
            if how == "close":
                stream.close()
            del stream
        return spans()

    async def async_(c: Case) -> list[tuple[str, Any, bool, list[str]]]:
        stream = await client.messages.create(**kwargs)
        if how == "with-exit":
            async with stream:
                await c.atake(stream)
        else:
            await c.atake(stream)
            if how == "close":
                await stream.close()
            del stream
        await loops.sleep(0.05)  # a close spawned by the finaliser runs on this loop
        return spans()

    def spans() -> list[tuple[str, Any, bool, list[str]]]:
        time.sleep(0.05)
        ended = [
            (s.name, s.status.status_code, s.end_time is not None, sorted(s.attributes or {}))
            for s in exporter.get_finished_spans()
        ]
        exporter.clear()
        return ended

    plain = await anthropic_case.run(sync, async_)
    instrument_with()
    anthropic_case.up.reset()
    guarded = await anthropic_case.run(sync, async_)
    assert len(plain) == 1
    assert guarded == plain
    record, receipt = await anthropic_case.settled()
    assert (receipt.reason, record.outcome) == ("consumer_closed", "disconnected")
    if anthropic_case.is_async:
        await client.close()
    else:
        client.close()


async def test_anthropic_own_span_ends_when_the_stall_timer_stops_the_stream(
    anthropic_case: Case, instrument_with: Any
) -> None:
    client, exporter = _anthropic_spans(anthropic_case)
    instrument_with(stall_timeout=0.2)
    kwargs = {**message_kwargs(LONG), "stream": True}

    def sync(c: Case) -> None:
        stream = client.messages.create(**kwargs)
        c.take(stream)
        c.receipt()
        assert stream is not None  # kept: only the stall timer stops it

    async def async_(c: Case) -> None:
        stream = await client.messages.create(**kwargs)
        await c.atake(stream)
        await c.areceipt()
        await loops.sleep(0.05)
        assert stream is not None

    await anthropic_case.run(sync, async_)
    (span,) = exporter.get_finished_spans()
    assert span.end_time is not None
    assert anthropic_case.sink.receipts[0].reason == "consumer_stalled"
