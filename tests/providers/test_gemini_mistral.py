"""What only google-genai and mistralai have: the rest of their proof is the shared suite.

Every way a stream ends, the bleed table and the SDK's own types under the guard run for
gemini and mistral in ``test_conformance.py``, ``test_bleed.py`` and ``test_transparency.py``
(their adapters are in ``_adapters.py``). This file holds what those SDKs add: Gemini's chats,
its client pool and its running-total usage; Mistral's FIM, agents and conversations APIs
(served by ``streamguard.testing.Upstream``) and ``parse_stream``; their telemetry and prices;
exact uninstrumenting and pass-through of non-streaming calls.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import streamguard
from streamguard import Receipt
from streamguard.testing import InMemoryReceiptSink, RequestRecord, expected_text, token_text

from . import _loops
from ._adapters import MESSAGES, MODEL
from ._harness import CUT, LONG, Case, check_consumer_closed, check_upstream_stopped

PROMPT = "count slowly"
EXHAUST = 20


def check_dropped(c: Case, texts: list[str], record: RequestRecord, receipt: Receipt, t_stop: int):
    """A consumer read ``CUT`` units, then dropped the stream at ``t_stop``."""
    assert texts == [token_text(i) for i in range(CUT)]
    check_consumer_closed(c, record, receipt, t_stop)


# ---------------------------------------------------------------------- google-genai only


async def test_gemini_chat_stream_goes_through_the_guard(
    gemini_case: Case, instrumented: None
) -> None:
    # Chat.send_message_stream calls Models.generate_content_stream: one guarded stream per
    # turn, closed when the chat's own generator is dropped; a completed turn is in the history.
    def sync(c: Case) -> None:
        chat = c.client.chats.create(model=MODEL, config={"max_output_tokens": LONG})
        turn = chat.send_message_stream(PROMPT)
        texts = c.take(turn)
        t_stop = time.monotonic_ns()
        del turn
        check_dropped(c, texts, c.finished(), c.receipt(), t_stop)
        assert chat.get_history() == []  # the cut turn was not recorded as an answer

    async def async_(c: Case) -> None:
        chat = c.client.chats.create(model=MODEL, config={"max_output_tokens": 5})
        texts = [c.text(x) async for x in await chat.send_message_stream(PROMPT)]
        assert "".join(texts) == expected_text(5)
        _, receipt = await c.settled()
        assert (receipt.reason, receipt.tokens.usage_source) == ("completed", "provider")
        history = chat.get_history()
        assert history[0].role == "user"
        assert "".join(p.text for content in history[1:] for p in content.parts) == expected_text(5)

    await gemini_case.run(sync, async_)


async def test_gemini_closing_one_stream_leaves_the_client_pool_open(
    gemini_async_case: Case, instrumented: None
) -> None:
    c = gemini_async_case
    first, second = await c.open(), await c.open(EXHAUST)
    await c.atake(first, 3)
    await first.aclose()  # closes the first stream's response, not the client
    texts = [c.text(chunk) async for chunk in second]
    third = [c.text(chunk) async for chunk in await c.open(3)]
    records = c.up.wait_for_requests(3)
    # The client can hold the last chunk before the upstream has written its own record.
    assert all(r.wait_done(5) for r in records), [r.outcome for r in records]
    assert [r.outcome for r in records] == ["disconnected", "completed", "completed"]
    assert ("".join(texts), "".join(third)) == (expected_text(EXHAUST), expected_text(3))
    receipts = await c.sink.wait_for_async(3)
    assert sorted(r.reason for r in receipts) == ["completed", "completed", "consumer_closed"]


async def test_gemini_running_total_usage_is_counted_once(
    gemini_case: Case, instrumented: None
) -> None:
    # Every chunk carries the running total: summed, they would say 1 + 2 + ... + 20.
    def sync(c: Case) -> list[Any]:
        return list(c.open(EXHAUST))

    async def async_(c: Case) -> list[Any]:
        return [chunk async for chunk in await c.open(EXHAUST)]

    chunks = await gemini_case.run(sync, async_)
    record, receipt = await gemini_case.settled()
    running = [chunk.usage_metadata.candidates_token_count for chunk in chunks]
    assert running[-1] == EXHAUST < sum(running)
    assert (receipt.tokens.produced, receipt.tokens.input, receipt.tokens.usage_source) == (
        EXHAUST,
        record.input_tokens,
        "provider",
    )


def test_gemini_usage_is_the_last_running_total_per_request(runtime: Any) -> None:
    # Automatic function calling sends several requests in one stream, each with its own
    # running total: the receipt counts each request's last total once.
    pytest.importorskip("google.genai")
    from google.genai.types import GenerateContentResponse

    from streamguard._engine.core import NOT_A_UNIT, StreamCore
    from streamguard._engine.reasons import StopReason
    from streamguard.providers.gemini._meter import GeminiMeter

    def chunk(part: dict[str, Any], prompt: int, output: int, finish: str | None = None) -> Any:
        candidate = {"content": {"role": "model", "parts": [part]}, "finish_reason": finish}
        usage = {"prompt_token_count": prompt, "candidates_token_count": output}
        return GenerateContentResponse.model_validate(
            {"candidates": [candidate], "usage_metadata": usage, "response_id": "r"}
        )

    call = {"function_call": {"name": "f", "args": {"x": 1}}}
    end = {"text": ""}
    core = StreamCore(runtime, provider="gcp.gemini", model="gemini-2.0-flash")
    meter = GeminiMeter(core)
    first = [chunk({"text": " a"}, 7, 1), chunk(call, 7, 2), chunk(end, 7, 2, "STOP")]
    late = [chunk(end, 7, 2, "STOP")]  # a repeat of the same request's total
    second = [chunk({"text": " b"}, 12, 1), chunk({"text": " c"}, 12, 3), chunk(end, 12, 3, "STOP")]
    units = [meter(c) for c in first + late + second]
    assert units == [1, 3, NOT_A_UNIT, NOT_A_UNIT, 1, 1, NOT_A_UNIT]
    assert (core.input_tokens, core.usage_exact) == (7 + 12, 2 + 3)
    assert core.finish_reasons == ["STOP", "STOP", "STOP"]
    core.request_stop(StopReason.COMPLETED)


# -------------------------------------------------------------------------- mistralai only

# api -> (operation, model in the receipt, how to open a stream of n tokens)
MISTRAL_APIS: dict[str, tuple[str, str | None, Callable[[Any, bool, int], Any]]] = {
    "fim": (
        "text_completion",
        "codestral-latest",
        lambda m, a, n: (m.fim.stream_async if a else m.fim.stream)(
            model="codestral-latest", prompt=PROMPT, max_tokens=n
        ),
    ),
    "agents": (
        "invoke_agent",
        None,
        lambda m, a, n: (m.agents.stream_async if a else m.agents.stream)(
            agent_id="ag-1", messages=MESSAGES, max_tokens=n
        ),
    ),
    "conversations.start": (
        "chat",
        "mistral-medium-latest",
        lambda m, a, n: (
            m.beta.conversations.start_stream_async if a else m.beta.conversations.start_stream
        )(inputs=PROMPT, model="mistral-medium-latest", completion_args={"max_tokens": n}),
    ),
    "conversations.append": (
        "chat",
        None,
        lambda m, a, n: (
            m.beta.conversations.append_stream_async if a else m.beta.conversations.append_stream
        )(conversation_id="conv-1", inputs=PROMPT, completion_args={"max_tokens": n}),
    ),
    "conversations.restart": (
        "chat",
        None,
        lambda m, a, n: (
            m.beta.conversations.restart_stream_async if a else m.beta.conversations.restart_stream
        )(
            conversation_id="conv-1",
            from_entry_id="e-1",
            inputs=PROMPT,
            completion_args={"max_tokens": n},
        ),
    ),
}


def mistral_text(event: Any) -> str:
    data = event.data
    if getattr(data, "type", None) == "message.output.delta":
        return str(data.content)
    choices = getattr(data, "choices", None)
    return str(choices[0].delta.content or "") if choices else ""


@pytest.mark.parametrize("api", list(MISTRAL_APIS))
async def test_mistral_fim_agents_and_conversation_streams_are_guarded(
    api: str, mistral_case: Case, instrumented: None
) -> None:
    # A stream read to its end (exact usage), then one closed after 3 units.
    operation, model, open_ = MISTRAL_APIS[api]

    def sync(c: Case) -> tuple[str, list[str], int]:
        whole = "".join(mistral_text(event) for event in open_(c.client.sdk, False, 5))
        stream = open_(c.client.sdk, False, LONG)
        texts = list(itertools.islice(filter(None, map(mistral_text, stream)), 3))
        t_stop = time.monotonic_ns()
        stream.close()
        return whole, texts, t_stop

    async def async_(c: Case) -> tuple[str, list[str], int]:
        whole = "".join([mistral_text(e) async for e in await open_(c.client.sdk, True, 5)])
        stream = await open_(c.client.sdk, True, LONG)
        texts = []
        async for event in stream:
            if text := mistral_text(event):
                texts.append(text)
                if len(texts) == 3:
                    break
        t_stop = time.monotonic_ns()
        await stream.close()
        return whole, texts, t_stop

    c = mistral_case
    whole, texts, t_stop = await c.run(sync, async_)
    first, second = c.up.wait_for_requests(2)
    completed, cut = await c.sink.wait_for_async(2)
    assert (whole, texts) == (expected_text(5), [token_text(i) for i in range(3)])
    assert (completed.operation, completed.model, completed.reason) == (
        operation,
        model,
        "completed",
    )
    assert (completed.tokens.usage_source, completed.tokens.input) == (
        "provider",
        first.input_tokens,
    )
    assert (cut.reason, cut.tokens.produced, cut.tokens.consumed) == ("consumer_closed", 3, 2)
    await _loops.to_thread(second.wait_done, 1.0)
    check_upstream_stopped(second, t_stop)


async def test_mistral_parse_stream_is_one_stream_with_one_receipt(
    mistral_case: Case, instrumented: None
) -> None:
    # parse_stream calls stream (both patched entry points fire): the re-entrancy guard makes
    # it one guarded stream.
    from pydantic import BaseModel

    class Answer(BaseModel):
        words: list[str]

    kwargs: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5}

    def sync(c: Case) -> str:
        stream = c.client.sdk.chat.parse_stream(Answer, **kwargs)
        assert streamguard.handle_of(stream) is not None
        return "".join(c.text(event) for event in stream)

    async def async_(c: Case) -> str:
        stream = await c.client.sdk.chat.parse_stream_async(Answer, **kwargs)
        assert streamguard.handle_of(stream) is not None
        return "".join([c.text(event) async for event in stream])

    c = mistral_case
    assert await c.run(sync, async_) == expected_text(5)
    record, receipt = await c.settled()  # exactly one receipt
    assert record.body["response_format"]["type"] == "json_schema"
    assert (receipt.reason, receipt.tokens.produced, receipt.tokens.usage_source) == (
        "completed",
        5,
        "provider",
    )


# ------------------------------------------------------------------- telemetry and prices

# provider name -> (finish reason of a stream cut by max_tokens, prefix of the response id)
FINISH = {"gcp.gemini": ("MAX_TOKENS", "resp-up"), "mistral_ai": ("length", "up")}
GENAI_KEYS = [
    "gen_ai.provider.name",
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "gen_ai.request.max_tokens",
    "gen_ai.response.model",
    "gen_ai.response.id",
    "gen_ai.response.finish_reasons",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "server.address",
    "server.port",
    "streamguard.outcome",
    "streamguard.stop.reason",
]


async def test_completed_stream_span_has_genai_attributes(
    gemini_mistral_case: Case, otel: Any, instrumented: None
) -> None:
    case = gemini_mistral_case
    otel.clear()

    def sync(c: Case) -> None:
        for _ in c.open(12):
            pass

    async def async_(c: Case) -> None:
        async for _ in await c.open(12):
            pass

    await case.run(sync, async_)
    record, receipt = await case.settled()
    (span,) = [
        s for s in otel.spans.get_finished_spans() if s.instrumentation_scope.name == "streamguard"
    ]
    attrs = dict(span.attributes)
    finish, id_prefix = FINISH[case.adapter.name]
    assert span.name == f"chat {MODEL}"
    assert {key: attrs.get(key) for key in GENAI_KEYS} == {
        "gen_ai.provider.name": case.adapter.name,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.max_tokens": 12,
        "gen_ai.response.model": MODEL,
        "gen_ai.response.id": f"{id_prefix}{record.id}",
        "gen_ai.response.finish_reasons": (finish,),
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": 12,
        "server.address": "127.0.0.1",
        "server.port": case.up.port,
        "streamguard.outcome": "completed",
        "streamguard.stop.reason": "completed",
    }
    assert attrs["gen_ai.response.time_to_first_chunk"] > 0
    (event,) = span.events
    assert event.attributes is not None
    assert event.attributes["streamguard.receipt.id"] == receipt.receipt_id


# provider name -> (genai-prices provider id, a model it prices)
PRICED = {
    "gcp.gemini": ("google", "gemini-2.0-flash"),
    "mistral_ai": ("mistral", "mistral-large-latest"),
}


async def test_cost_is_tokens_times_the_genai_prices_price(
    gemini_mistral_case: Case, instrumented: None
) -> None:
    from genai_prices import Usage, calc_price

    c = gemini_mistral_case
    prices_id, model = PRICED[c.adapter.name]

    def open_(c: Case) -> Any:
        if c.adapter.name == "gcp.gemini":
            return c.client.models.generate_content_stream(
                model=model, contents=PROMPT, config={"max_output_tokens": 40}
            )
        chat = c.client.sdk.chat
        stream = chat.stream_async if c.is_async else chat.stream
        return stream(model=model, messages=MESSAGES, max_tokens=40)

    def sync(c: Case) -> None:
        for _ in open_(c):
            pass

    async def async_(c: Case) -> None:
        async for _ in await open_(c):
            pass

    await c.run(sync, async_)
    _, r = await c.settled()
    assert (r.tokens.usage_source, r.tokens.produced, r.cost.pricing_source) == (
        "provider",
        40,
        "genai-prices",
    )
    price_in = calc_price(Usage(input_tokens=r.tokens.input), model, provider_id=prices_id)
    price_out = calc_price(Usage(output_tokens=40), model, provider_id=prices_id)
    assert (Decimal(r.cost.input or "x"), Decimal(r.cost.output or "x")) == (
        price_in.total_price,
        price_out.total_price,
    )
    assert r.cost.undelivered == "0"


# ---------------------------------------------------------------- patching and pass-through


def test_uninstrument_restores_every_patched_method_exactly(
    instrument_with: Callable[..., None],
) -> None:
    pytest.importorskip("google.genai")
    pytest.importorskip("mistralai.client")
    import google.genai._api_client as api_client
    import google.genai.models as models
    import mistralai.client.chat as chat
    import mistralai.client.conversations as conversations

    patched = [
        (models.Models, "generate_content_stream"),
        (models.AsyncModels, "generate_content_stream"),
        (api_client.BaseApiClient, "_request"),
        (api_client.BaseApiClient, "_async_request"),
        (chat.Chat, "stream"),
        (chat.Chat, "stream_async"),
        (conversations.Conversations, "restart_stream_async"),
    ]
    before = {(cls, name): vars(cls)[name] for cls, name in patched}
    instrument_with()
    assert all(vars(cls)[name] is not before[(cls, name)] for cls, name in patched)
    streamguard.uninstrument()
    assert all(vars(cls)[name] is before[(cls, name)] for cls, name in patched)


async def test_non_streaming_calls_pass_through_without_a_receipt(
    gemini_mistral_case: Case, sink: InMemoryReceiptSink, instrumented: None
) -> None:
    case = gemini_mistral_case

    def sync(c: Case) -> str:
        if c.adapter.name == "gcp.gemini":
            answer = c.client.models.generate_content(
                model=MODEL, contents=PROMPT, config={"max_output_tokens": 3}
            )
            return str(answer.text)
        completion = c.client.sdk.chat.complete(model=MODEL, messages=MESSAGES, max_tokens=3)
        return str(completion.choices[0].message.content)

    async def async_(c: Case) -> str:
        if c.adapter.name == "gcp.gemini":
            answer = await c.client.models.generate_content(
                model=MODEL, contents=PROMPT, config={"max_output_tokens": 3}
            )
            return str(answer.text)
        completion = await c.client.sdk.chat.complete_async(
            model=MODEL, messages=MESSAGES, max_tokens=3
        )
        return str(completion.choices[0].message.content)

    assert await case.run(sync, async_) == expected_text(3)
    streamguard.uninstrument()  # flushes every receipt there is
    assert sink.receipts == []
