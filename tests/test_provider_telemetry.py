"""GenAI semantic-convention span attributes for each provider, with the receipt event."""

from __future__ import annotations

import anthropic
import ollama
import openai
import pytest

import streamguard
from streamguard._receipts.signing import HmacSigner
from streamguard.testing import Upstream
from streamguard.testing.sinks import InMemoryReceiptSink

PROMPT = [{"role": "user", "content": "two words"}]


@pytest.fixture(scope="module")
def upstream():
    with Upstream(token_interval=0.002) as up:
        yield up


@pytest.fixture
def guarded(otel):
    sink = InMemoryReceiptSink()
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="test"))
    otel.clear()
    yield sink
    streamguard.uninstrument()


CLIENTS: list[object] = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while CLIENTS:
        client = CLIENTS.pop()
        getattr(client, "_client", client).close()  # type: ignore[attr-defined]


def _open(provider: str, up: Upstream) -> object:
    if provider == "openai":
        client = openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
        CLIENTS.append(client)
        return client.chat.completions.create(
            model="gpt-4o",
            messages=PROMPT,
            max_tokens=12,
            stream=True,  # type: ignore[arg-type]
        )
    if provider == "anthropic":
        a = anthropic.Anthropic(base_url=up.anthropic_base_url, api_key="k", max_retries=0)
        CLIENTS.append(a)
        return a.messages.create(
            model="claude-haiku-4-5",
            messages=PROMPT,
            max_tokens=12,
            stream=True,  # type: ignore[arg-type]
        )
    o = ollama.Client(host=up.ollama_host)
    CLIENTS.append(o)
    return o.chat(model="llama3", messages=PROMPT, stream=True, options={"num_predict": 12})


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4o"), ("anthropic", "claude-haiku-4-5"), ("ollama", "llama3")],
)
def test_completed_stream_span_has_genai_attributes(
    provider, model, upstream, guarded, otel
) -> None:
    for _ in _open(provider, upstream):  # type: ignore[attr-defined]
        pass
    receipt = guarded.wait_for(1, 2)[0]
    (record,) = [r for r in upstream.requests if r.provider == provider][-1:]
    # anthropic's SDK emits spans of its own: take StreamGuard's.
    (span,) = [
        s for s in otel.spans.get_finished_spans() if s.instrumentation_scope.name == "streamguard"
    ]
    attrs = dict(span.attributes)
    assert span.name == f"chat {model}"
    assert attrs["gen_ai.provider.name"] == provider
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == model
    assert attrs["gen_ai.request.max_tokens"] == 12
    assert attrs["gen_ai.response.model"]
    assert attrs["gen_ai.usage.input_tokens"] == record.input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == record.output_tokens == 12
    assert attrs["gen_ai.response.finish_reasons"]
    assert attrs["gen_ai.response.time_to_first_chunk"] > 0
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == upstream.port
    assert (attrs["streamguard.outcome"], attrs["streamguard.stop.reason"]) == (
        "completed",
        "completed",
    )
    if provider != "ollama":
        assert attrs["gen_ai.response.id"]
    assert receipt.tokens.usage_source == "provider"
    assert receipt.tokens.input == record.input_tokens
    (event,) = span.events
    assert event.attributes["streamguard.receipt.id"] == receipt.receipt_id
