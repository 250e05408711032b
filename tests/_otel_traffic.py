"""Instrumented LLM traffic in a process of its own, with its own OTel providers.

The test session installs global in-memory OTel providers (tests/conftest.py) and OTel globals
can be set once per process, so the tests that need the SDK's Prometheus exporter or the real
OTLP exporters run this script in a subprocess:

    python tests/_otel_traffic.py prometheus PORT   # PrometheusMetricReader on 127.0.0.1:PORT;
                                                    # wave, "ready", waits for a line on stdin,
                                                    # wave, "done", waits for stdin to close
    python tests/_otel_traffic.py otlp grpc|http/protobuf   # configure_otel(); one wave; exits

A wave is, against a local ``Upstream``: for each of openai, anthropic and ollama a completed
stream and one the application leaves early, plus one stream rejected by a zero budget. Signing
key, key id and ledger come from the STREAMGUARD_* environment; OTLP endpoints from OTEL_*.
Each wave prints one JSON line: what the application saw, per scenario.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anthropic
import ollama
import openai

import streamguard
from streamguard import Budget, BudgetExceeded
from streamguard.testing import Upstream

PROMPT = [{"role": "user", "content": "hello there"}]


def wave(up: Upstream) -> dict[str, Any]:
    """Run every scenario once; return what the application observed in each."""
    seen: dict[str, Any] = {}
    oc = openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
    ac = anthropic.Anthropic(base_url=up.anthropic_base_url, api_key="k", max_retries=0)
    olc = ollama.Client(host=up.ollama_host)

    def openai_stream(max_tokens: int) -> Any:
        return oc.chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=max_tokens, stream=True
        )

    seen["openai_completed"] = "".join(
        c.choices[0].delta.content or "" for c in openai_stream(8) if c.choices
    )
    stream = openai_stream(200)
    seen["openai_cancelled"] = [next(stream).choices[0].delta.content for _ in range(3)]
    stream.close()
    with ac.messages.stream(model="claude-haiku-4-5", max_tokens=8, messages=PROMPT) as s:
        seen["anthropic_completed"] = "".join(s.text_stream)
    with ac.messages.stream(model="claude-haiku-4-5", max_tokens=200, messages=PROMPT) as s:
        texts = iter(s.text_stream)
        seen["anthropic_cancelled"] = [next(texts) for _ in range(3)]
    chunks = olc.chat(model="llama3.2", messages=PROMPT, stream=True, options={"num_predict": 8})
    seen["ollama_completed"] = "".join(c["message"]["content"] for c in chunks)
    chunks = olc.chat(model="llama3.2", messages=PROMPT, stream=True, options={"num_predict": 200})
    seen["ollama_cancelled"] = [next(chunks)["message"]["content"] for _ in range(3)]
    chunks.close()  # type: ignore[attr-defined]
    try:
        with streamguard.limits(budget=Budget(limit_usd="0", name="zero")):
            openai_stream(8)
        seen["budget"] = "not rejected"
    except BudgetExceeded:
        seen["budget"] = "BudgetExceeded"
    oc.close()
    ac.close()
    return seen


def main(mode: str, arg: str) -> int:
    if mode == "prometheus":
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server

        metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
        start_http_server(int(arg), addr="127.0.0.1")
        providers: dict[str, Any] = {}
    else:
        providers = streamguard.configure_otel(
            service_name="streamguard-tests", protocol=arg, export_interval_s=60
        )
    streamguard.instrument()
    with Upstream(token_interval=0.001) as up:
        print(json.dumps(wave(up)), flush=True)
        if mode == "prometheus":
            print("ready", flush=True)
            sys.stdin.readline()
            print(json.dumps(wave(up)), flush=True)
            print("done", flush=True)
            sys.stdin.read()
    streamguard.uninstrument()
    started = time.monotonic()
    for provider in providers.values():
        provider.shutdown()  # flushes spans, logs and the last metrics
    print(json.dumps({"shutdown_s": round(time.monotonic() - started, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
