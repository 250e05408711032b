"""Costs: genai-prices for known models, null for unknown ones, overrides; estimator drift."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import anthropic
import ollama
import openai
import pytest
from genai_prices import Usage, calc_price

import streamguard
from streamguard import Price
from streamguard._money.pricing import Pricing
from streamguard._receipts.signing import HmacSigner
from streamguard.testing import Upstream
from streamguard.testing.sinks import InMemoryReceiptSink

PROMPT = [{"role": "user", "content": "price this answer please"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.001) as up:
        yield up


@pytest.fixture
def sink() -> Iterator[InMemoryReceiptSink]:
    sink = InMemoryReceiptSink()
    yield sink
    streamguard.uninstrument()


def _exhaust(up: Upstream, provider: str, model: str, max_tokens: int) -> None:
    if provider == "openai":
        with openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0) as c:
            for _ in c.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=max_tokens, stream=True
            ):
                pass
    elif provider == "anthropic":
        with anthropic.Anthropic(base_url=up.anthropic_base_url, api_key="k", max_retries=0) as a:
            for _ in a.messages.create(
                model=model, messages=PROMPT, max_tokens=max_tokens, stream=True
            ):
                pass
    else:
        o = ollama.Client(host=up.ollama_host)
        for _ in o.chat(
            model=model, messages=PROMPT, stream=True, options={"num_predict": max_tokens}
        ):
            pass
        o._client.close()


@pytest.mark.parametrize(
    ("provider", "prices_id", "model"),
    [
        ("openai", "openai", "gpt-4o"),
        ("openai", "openai", "gpt-4o-mini"),
        ("anthropic", "anthropic", "claude-sonnet-4-0"),
        ("anthropic", "anthropic", "claude-3-5-haiku-latest"),
    ],
)
def test_cost_is_tokens_times_the_genai_prices_price(
    upstream, sink, provider, prices_id, model
) -> None:
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"))
    _exhaust(upstream, provider, model, 40)
    r = sink.wait_for(1, 2)[0]
    assert r.tokens.usage_source == "provider"
    expected_in = calc_price(Usage(input_tokens=r.tokens.input), model, provider_id=prices_id)
    expected_out = calc_price(Usage(output_tokens=40), model, provider_id=prices_id)
    assert Decimal(r.cost.input) == expected_in.total_price
    assert Decimal(r.cost.output) == expected_out.total_price
    assert r.cost.pricing_source == "genai-prices"
    assert r.cost.undelivered == "0"


def test_unknown_model_has_null_cost_never_an_invented_price(upstream, sink) -> None:
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"))
    _exhaust(upstream, "openai", "house-model-7b", 10)
    _exhaust(upstream, "ollama", "llama3", 10)
    for r in sink.wait_for(2, 2):
        assert (r.cost.input, r.cost.output, r.cost.undelivered, r.cost.prevented_estimate) == (
            None,
            None,
            None,
            None,
        )
        assert r.cost.pricing_source == "unknown"


def test_price_overrides_and_price_function(upstream, sink) -> None:
    def price_function(provider: str, model: str) -> Price | None:
        return (
            Price(Decimal("0.000001"), Decimal("0.000002"), "house") if model == "llama3" else None
        )

    streamguard.instrument(
        sinks=[sink],
        signer=HmacSigner(bytes(32), key_id="t"),
        prices={"gpt-4o": Price(Decimal("0.00001"), Decimal("0.0001"), "contract")},
        price_function=price_function,
    )
    _exhaust(upstream, "openai", "gpt-4o", 10)
    _exhaust(upstream, "ollama", "llama3", 10)
    first, second = sink.wait_for(2, 2)
    assert (first.cost.pricing_source, first.cost.output) == ("contract", "0.001")
    assert (second.cost.pricing_source, second.cost.output) == ("house", "0.00002")


def test_cached_input_is_priced_as_cache_reads() -> None:
    price = Pricing().price("openai", "gpt-4o")
    assert price is not None
    assert (price.input, price.cached_input) == (Decimal("0.0000025"), Decimal("0.00000125"))


def test_whole_completion_billing_prevents_nothing(upstream, sink) -> None:
    streamguard.instrument(
        sinks=[sink],
        signer=HmacSigner(bytes(32), key_id="t"),
        billing={"openai": "whole_completion"},
    )
    with openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0) as c:
        stream = c.chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=100, stream=True
        )
        next(stream)
        stream.close()
    r = sink.wait_for(1, 2)[0]
    assert (r.reason, r.tokens.prevented_estimate, r.attributes["billing"]) == (
        "consumer_closed",
        0,
        "whole_completion",
    )


def _drift_points(otel) -> dict[str, tuple[float, int]]:
    data = otel.metrics.get_metrics_data()
    out: dict[str, tuple[float, int]] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "streamguard.estimate.drift":
                    for p in m.data.data_points:
                        model = p.attributes["gen_ai.request.model"]
                        total, count = out.get(model, (0.0, 0))
                        out[model] = (total + p.sum, count + p.count)
    return out


# The estimator counts about four characters per token. The drift metric records the size of
# each miss (its direction is an attribute). On the upstream's token sequences
# (" w0" ... " w999", each one real token) it must stay within 10% of the provider's count.
DRIFT_TOLERANCE = 0.10


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
@pytest.mark.parametrize("max_tokens", [10, 100, 500, 1000])
def test_estimator_drift_stays_within_tolerance(upstream, sink, otel, provider, max_tokens) -> None:
    model = f"drift-{provider}-{max_tokens}"
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"))
    before = _drift_points(otel).get(model, (0.0, 0))
    _exhaust(upstream, provider, model, max_tokens)
    r = sink.wait_for(1, 5)[0]
    assert r.tokens.produced == max_tokens
    after = _drift_points(otel)[model]
    drift, count = after[0] - before[0], after[1] - before[1]
    assert count == 1
    assert abs(drift) <= DRIFT_TOLERANCE * max_tokens, drift
