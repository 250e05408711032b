"""The real provider SDKs, sync and async, read what the test upstream sends: text, usage,
helpers, and each fault as the exception the SDK raises for it against the real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import ollama
import openai
import pytest

from streamguard.testing import Fault, RequestRecord, Upstream, expected_text

INTERVAL = 0.005
N = 5  # tokens per answer in these tests
MSGS: Any = [
    {"role": "user", "content": "say five words"}
]  # 3 input tokens; Any: each SDK has its own TypedDict
TEXT = expected_text(N)
SHORT = {"x-upstream-tokens": "3"}  # an answer that ends on its own before the limit


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=INTERVAL, default_max_tokens=50) as up:
        yield up


@pytest.fixture
def up(shared_upstream: Upstream) -> Upstream:
    shared_upstream.reset()
    return shared_upstream


def genai_module() -> Any:
    return pytest.importorskip("google.genai")


def mistral_class() -> Any:
    # mistralai 2.x and 3.x put the client in mistralai.client.
    return pytest.importorskip("mistralai.client").Mistral


def finished(up: Upstream, n: int = 1) -> list[RequestRecord]:
    records = up.wait_for_requests(n)
    for record in records:
        assert record.wait_done(5.0), record
    return records


# -- OpenAI -----------------------------------------------------------------------------------


def test_openai_chat_stream_with_usage_sync(up: Upstream) -> None:
    with openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSGS,
            max_tokens=N,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        with client.chat.completions.stream(
            model="gpt-4o-mini",
            messages=MSGS,
            max_tokens=N,
            extra_headers=SHORT,
        ) as helper:
            final = helper.get_final_completion()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, N)
    assert final.choices[0].message.content == expected_text(3)
    assert final.choices[0].finish_reason == "stop"
    first, second = finished(up, 2)
    assert (first.output_tokens, first.completed, second.completed) == (N, True, True)


async def test_openai_chat_stream_with_usage_async(up: Upstream) -> None:
    async with openai.AsyncOpenAI(
        base_url=up.openai_base_url, api_key="k", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSGS,
            max_completion_tokens=N,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSGS,
            max_tokens=N,
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == N
    assert whole.choices[0].message.content == TEXT
    assert whole.usage is not None
    assert whole.usage.total_tokens == 3 + N


def test_openai_responses_stream_and_helper_sync(up: Upstream) -> None:
    with openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0) as client:
        events = list(
            client.responses.create(
                model="gpt-4o-mini", input="say five words", max_output_tokens=N, stream=True
            )
        )
        with client.responses.stream(
            model="gpt-4o-mini", input="say five words", max_output_tokens=N
        ) as helper:
            deltas = [e.delta for e in helper if e.type == "response.output_text.delta"]
            final = helper.get_final_response()
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    assert events[-1].type == "response.completed"
    assert "".join(deltas) == final.output_text == TEXT
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, N)


async def test_openai_responses_helper_async(up: Upstream) -> None:
    async with (
        openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0) as client,
        client.responses.stream(
            model="gpt-4o-mini", input="say five words", max_output_tokens=N
        ) as helper,
    ):
        final = await helper.get_final_response()
    assert final.output_text == TEXT
    assert final.usage is not None
    assert final.usage.total_tokens == 3 + N


def test_openai_legacy_completions_stream_sync(up: Upstream) -> None:
    with openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0) as client:
        chunks = list(
            client.completions.create(
                model="gpt-3.5-turbo-instruct",
                prompt="say five words",
                max_tokens=N,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == N
    (record,) = finished(up)
    assert (record.api, record.input_tokens) == ("completions", 3)


# -- Anthropic --------------------------------------------------------------------------------


def test_anthropic_stream_and_helpers_sync(up: Upstream) -> None:
    with anthropic.Anthropic(base_url=up.anthropic_base_url, api_key="k", max_retries=0) as client:
        events = list(
            client.messages.create(
                model="claude-x",
                max_tokens=N,
                messages=MSGS,
                stream=True,
            )
        )
        with client.messages.stream(
            model="claude-x",
            max_tokens=N,
            messages=MSGS,
        ) as helper:
            text = "".join(helper.text_stream)
            message = helper.get_final_message()
        with client.beta.messages.stream(
            model="claude-x",
            max_tokens=N,
            messages=MSGS,
        ) as beta:
            beta.until_done()
            beta_message = beta.get_final_message()
    assert [e.type for e in events][:2] == ["message_start", "content_block_start"]
    assert text == TEXT
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, N)
    assert message.stop_reason == "max_tokens"
    assert beta_message.usage.output_tokens == N
    assert [r.path for r in finished(up, 3)] == ["/v1/messages"] * 3


async def test_anthropic_stream_and_helpers_async(up: Upstream) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=up.anthropic_base_url, api_key="k", max_retries=0
    ) as client:
        async with client.messages.stream(
            model="claude-x",
            max_tokens=N,
            messages=MSGS,
            extra_headers=SHORT,
        ) as helper:
            text = "".join([t async for t in helper.text_stream])
            message = await helper.get_final_message()
        whole = await client.messages.create(
            model="claude-x",
            max_tokens=N,
            messages=MSGS,
        )
    assert text == expected_text(3)
    assert (message.usage.output_tokens, message.stop_reason) == (3, "end_turn")
    assert whole.content[0].type == "text"
    assert whole.content[0].text == TEXT
    assert whole.usage.output_tokens == N


# -- Ollama -----------------------------------------------------------------------------------


def test_ollama_chat_and_generate_sync(up: Upstream) -> None:
    with ollama.Client(host=up.ollama_host) as client:
        parts = list(
            client.chat(model="llama3", messages=MSGS, stream=True, options={"num_predict": N})
        )
        generated = list(client.generate(model="llama3", prompt="a b", stream=True))
        whole = client.chat(model="llama3", messages=MSGS, options={"num_predict": N})
    assert "".join(p.message.content or "" for p in parts) == TEXT
    assert (parts[-1].done, parts[-1].prompt_eval_count, parts[-1].eval_count) == (True, 3, N)
    assert parts[-1].done_reason == "length"
    assert generated[-1].eval_count == 50  # no num_predict: default_max_tokens, done "stop"
    assert generated[-1].done_reason == "stop"
    assert whole.message.content == TEXT


async def test_ollama_chat_async(up: Upstream) -> None:
    client = ollama.AsyncClient(host=up.ollama_host)
    async with client:
        stream = await client.chat(
            model="llama3", messages=MSGS, stream=True, options={"num_predict": N}
        )
        parts = [part async for part in stream]
    assert "".join(p.message.content or "" for p in parts) == TEXT
    assert parts[-1].eval_count == N


def test_ollama_module_level_chat_reads_ollama_host_at_import(up: Upstream) -> None:
    code = (
        "import ollama\n"
        "parts = list(ollama.chat(model='m', messages=[{'role': 'user', 'content': 'hi'}],"
        " stream=True, options={'num_predict': 3}))\n"
        "print(parts[-1].eval_count)\n"
    )
    env = {**os.environ, "OLLAMA_HOST": up.ollama_host}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "3", result.stderr
    assert finished(up)[0].provider == "ollama"


# -- Gemini -----------------------------------------------------------------------------------


def test_gemini_stream_sync(up: Upstream) -> None:
    genai = genai_module()
    client = genai.Client(api_key="k", http_options={"base_url": up.gemini_base_url})
    with client:
        chunks = list(
            client.models.generate_content_stream(
                model="gemini-2.0-flash", contents="say five words", config={"max_output_tokens": N}
            )
        )
        whole = client.models.generate_content(
            model="gemini-2.0-flash", contents="say five words", config={"max_output_tokens": N}
        )
    assert "".join(c.text or "" for c in chunks) == TEXT
    usage = chunks[-1].usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count) == (3, N)
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == genai.types.FinishReason.MAX_TOKENS
    assert whole.text == TEXT
    stream_record, _ = finished(up, 2)
    assert (stream_record.model, stream_record.stream) == ("gemini-2.0-flash", True)


async def test_gemini_stream_async(up: Upstream) -> None:
    genai = genai_module()
    client = genai.Client(api_key="k", http_options={"base_url": up.gemini_base_url}).aio
    async with client:
        stream = await client.models.generate_content_stream(
            model="gemini-2.0-flash", contents="say five words", config={"max_output_tokens": N}
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.text or "" for c in chunks) == TEXT
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata.total_token_count == 3 + N


# -- Mistral ----------------------------------------------------------------------------------


def test_mistral_stream_sync(up: Upstream) -> None:
    with mistral_class()(api_key="k", server_url=up.mistral_base_url) as client:
        events = list(client.chat.stream(model="mistral-small", messages=MSGS, max_tokens=N))
        whole = client.chat.complete(model="mistral-small", messages=MSGS, max_tokens=N)
    assert "".join(e.data.choices[0].delta.content or "" for e in events) == TEXT
    last = events[-1].data
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, N)
    assert last.choices[0].finish_reason == "length"
    assert whole.choices[0].message.content == TEXT
    assert [r.path for r in finished(up, 2)] == ["/mistral/v1/chat/completions"] * 2


async def test_mistral_stream_async(up: Upstream) -> None:
    async with mistral_class()(api_key="k", server_url=up.mistral_base_url) as client:
        stream = await client.chat.stream_async(model="mistral-small", messages=MSGS, max_tokens=N)
        events = [event async for event in stream]
    assert "".join(e.data.choices[0].delta.content or "" for e in events) == TEXT
    assert events[-1].data.usage is not None
    assert events[-1].data.usage.total_tokens == 3 + N


# -- faults, as each SDK reports them ---------------------------------------------------------


def consume_openai(up: Upstream) -> list[str]:
    with openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=MSGS,
            max_tokens=N,
            stream=True,
        )
        return [c.choices[0].delta.content or "" for c in stream if c.choices]


def consume_anthropic(up: Upstream) -> list[str]:
    with (
        anthropic.Anthropic(base_url=up.anthropic_base_url, api_key="k", max_retries=0) as client,
        client.messages.stream(
            model="m",
            max_tokens=N,
            messages=MSGS,
        ) as stream,
    ):
        return list(stream.text_stream)


def consume_ollama(up: Upstream) -> list[str]:
    with ollama.Client(host=up.ollama_host) as client:
        parts = client.chat(model="m", messages=MSGS, stream=True, options={"num_predict": N})
        return [p.message.content or "" for p in parts]


def consume_gemini(up: Upstream) -> list[str]:
    genai = genai_module()
    with genai.Client(api_key="k", http_options={"base_url": up.gemini_base_url}) as client:
        chunks = client.models.generate_content_stream(
            model="g", contents="hi", config={"max_output_tokens": N}
        )
        return [c.text or "" for c in chunks]


def consume_mistral(up: Upstream) -> list[str]:
    with mistral_class()(api_key="k", server_url=up.mistral_base_url) as client:
        events = client.chat.stream(model="m", messages=MSGS, max_tokens=N)
        return [e.data.choices[0].delta.content or "" for e in events]


CONSUMERS: dict[str, Callable[[Upstream], list[str]]] = {
    "openai": consume_openai,
    "anthropic": consume_anthropic,
    "ollama": consume_ollama,
    "gemini": consume_gemini,
    "mistral": consume_mistral,
}


def expected_error(
    provider: str, fault: str
) -> type[BaseException] | tuple[type[BaseException], ...]:
    """What each SDK raises against this upstream (and in production): a broken connection as
    the HTTP library's error or the SDK's own (openai, and anthropic since 2.17, wrap it); a
    malformed chunk as the JSON or validation error of the SDK's parser."""
    errors: Any
    by_fault: dict[str, type[BaseException]]
    if provider == "gemini":
        errors = genai_module().errors
        by_fault = {
            "reset": httpx2.ReadError,
            "malformed": errors.UnknownApiResponseError,
            "429": errors.ClientError,
            "500": errors.ServerError,
        }
        return by_fault[fault]
    if provider == "mistral":
        errors = pytest.importorskip("mistralai.client.errors")
        by_fault = {
            "reset": httpx2.ReadError,
            "malformed": errors.ResponseValidationError,
            "429": errors.SDKError,
            "500": errors.SDKError,
        }
        return by_fault[fault]
    table: dict[str, dict[str, type[BaseException] | tuple[type[BaseException], ...]]] = {
        "openai": {
            "reset": openai.APIConnectionError,
            "malformed": json.JSONDecodeError,
            "429": openai.RateLimitError,
            "500": openai.InternalServerError,
        },
        "anthropic": {
            "reset": (httpx2.ReadError, anthropic.APIConnectionError),
            "malformed": json.JSONDecodeError,
            "429": anthropic.RateLimitError,
            "500": anthropic.InternalServerError,
        },
        "ollama": {
            "reset": httpx.ReadError,
            "malformed": json.JSONDecodeError,
            "429": ollama.ResponseError,
            "500": ollama.ResponseError,
        },
    }
    return table[provider][fault]


FAULTS = {
    "reset": (Fault("reset", after_tokens=2), "reset"),
    "stall": (Fault("stall", after_tokens=2, seconds=0.15), "reset"),
    "malformed": (Fault("malformed", after_tokens=2), "malformed"),
    "http_429": (Fault("http_error", status=429), "429"),
    "http_500": (Fault("http_error", status=500), "500"),
}


@pytest.mark.parametrize("fault_name", list(FAULTS))
@pytest.mark.parametrize("provider", list(CONSUMERS))
def test_fault_is_raised_as_the_sdk_error(up: Upstream, provider: str, fault_name: str) -> None:
    fault, error_kind = FAULTS[fault_name]
    error = expected_error(provider, error_kind)
    up.add_fault(fault)
    started = time.monotonic()
    with pytest.raises(error):
        CONSUMERS[provider](up)
    (record,) = finished(up)
    assert record.fault == fault
    if fault.kind in ("reset", "stall"):
        assert (record.outcome, record.tokens_generated) == ("reset", 2)
    if fault.kind == "stall":
        assert time.monotonic() - started >= 0.15
    if fault.kind == "http_error":
        assert (record.status, record.outcome, record.tokens_generated) == (
            fault.status,
            "http_error",
            0,
        )
    if fault.kind == "malformed":
        # The SDK's parser raised inside the stream, which closed the response: generation
        # stopped (or the short answer had already finished).
        assert record.outcome in ("disconnected", "completed")


@pytest.mark.parametrize("provider", list(CONSUMERS))
def test_slow_first_token_is_only_slow(up: Upstream, provider: str) -> None:
    up.add_fault(Fault("slow_first_token", seconds=0.1))
    assert "".join(CONSUMERS[provider](up)) == TEXT
    (record,) = finished(up)
    assert record.token_times_ns[0] - record.started_ns >= 100_000_000
    assert record.completed
