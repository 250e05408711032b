"""Spans, receipt events, log records and metrics carry the names of DESIGN section 6."""

from __future__ import annotations

import contextlib
import json

from opentelemetry.trace import SpanKind, StatusCode

from streamguard import GuardedIterator
from streamguard._telemetry import names


def test_span_event_and_log_record_share_receipt_and_trace(runtime, sink, otel) -> None:
    g = GuardedIterator(iter(["a", "b", "c"]), provider="openai", model="gpt-4o", max_tokens=50)
    next(g)
    g.close()
    receipt = sink.wait_for(1, 2)[0]
    (span,) = otel.spans.get_finished_spans()
    assert span.name == "chat gpt-4o"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET  # a cancellation is not an error
    attrs = dict(span.attributes or {})
    assert {
        k: attrs[k]
        for k in (
            "gen_ai.provider.name",
            "gen_ai.operation.name",
            "gen_ai.request.model",
            "gen_ai.request.stream",
            "gen_ai.request.max_tokens",
            "streamguard.outcome",
            "streamguard.stop.reason",
            "streamguard.stop.category",
        )
    } == {
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.stream": True,
        "gen_ai.request.max_tokens": 50,
        "streamguard.outcome": "cancelled",
        "streamguard.stop.reason": "consumer_closed",
        "streamguard.stop.category": "client",
    }
    (event,) = [e for e in span.events if e.name == "streamguard.receipt"]
    ev = dict(event.attributes or {})
    assert ev[names.RECEIPT_ID] == receipt.receipt_id
    assert ev[names.RECEIPT_HASH] == receipt.hash
    assert json.loads(ev[names.RECEIPT_JSON])["receipt_id"] == receipt.receipt_id
    ctx = span.get_span_context()
    assert (receipt.trace_id, receipt.span_id) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")

    (log,) = otel.logs.get_finished_logs()
    record = log.log_record
    assert record.event_name == "streamguard.receipt"
    assert record.timestamp == receipt.times.finalized
    assert record.trace_id == ctx.trace_id and record.span_id == ctx.span_id
    assert record.body == receipt.to_dict()
    assert dict(record.attributes or {}) == {
        "streamguard.event": "receipt",
        "streamguard.receipt.id": receipt.receipt_id,
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "streamguard.outcome": "cancelled",
        "streamguard.stop.reason": "consumer_closed",
    }


def test_upstream_failure_sets_error_status(runtime, sink, otel) -> None:
    def broken():
        yield "a"
        raise ConnectionResetError("reset")

    g = GuardedIterator(broken(), provider="openai", model="gpt-4o")
    with contextlib.suppress(ConnectionResetError):
        list(g)
    (span,) = otel.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ConnectionResetError"  # type: ignore[index]


def _stream_counts(otel) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    data = otel.metrics.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "streamguard.streams":
                    for p in m.data.data_points:
                        if p.attributes["gen_ai.request.model"] == "gpt-4o":
                            key = (
                                p.attributes["streamguard.outcome"],
                                p.attributes["streamguard.stop.reason"],
                            )
                            counts[key] = counts.get(key, 0) + p.value
    return counts


def test_metric_names_units_and_attributes(runtime, sink, otel) -> None:
    before = _stream_counts(otel)
    g = GuardedIterator(iter(["aaaa"] * 3), provider="openai", model="gpt-4o")
    next(g)
    g.close()
    list(GuardedIterator(iter(["bb"] * 2), provider="openai", model="gpt-4o"))
    sink.wait_for(2, 2)
    data = otel.metrics.get_metrics_data()
    found = {
        m.name: m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == "streamguard"
        for m in sm.metrics
    }
    expected_units = {
        "gen_ai.client.token.usage": "{token}",
        "gen_ai.client.operation.duration": "s",
        "gen_ai.client.operation.time_to_first_chunk": "s",
        "streamguard.streams": "{stream}",
        "streamguard.streams.active": "{stream}",
        "streamguard.tokens": "{token}",
        "streamguard.cost": "USD",
        "streamguard.stop.latency": "s",
        "streamguard.receipts": "{receipt}",
    }
    assert {k: found[k].unit for k in expected_units} == expected_units
    for m in found.values():
        assert m.description, m.name
    after = _stream_counts(otel)
    streams = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert streams == {("cancelled", "consumer_closed"): 1, ("completed", "completed"): 1}
    kinds = {p.attributes["streamguard.kind"] for p in found["streamguard.tokens"].data.data_points}
    assert {"produced", "consumed", "undelivered", "prevented"} <= kinds
    costs = {p.attributes["streamguard.kind"] for p in found["streamguard.cost"].data.data_points}
    assert {"spent", "undelivered", "prevented"} <= costs  # gpt-4o is in genai-prices
    usage = found["gen_ai.client.token.usage"].data.data_points
    assert "output" in {p.attributes["gen_ai.token.type"] for p in usage}
    assert {p.attributes["gen_ai.token.type"] for p in usage} <= {"input", "output"}
    assert all(set(p.attributes) >= {"gen_ai.provider.name", "gen_ai.request.model"} for p in usage)
    latency = found["streamguard.stop.latency"].data.data_points
    assert {"consumer_closed", "completed"} <= {
        p.attributes["streamguard.stop.reason"] for p in latency
    }
    # No stream ids or other high-cardinality attributes on any metric.
    for m in found.values():
        for p in m.data.data_points:
            assert not any("id" in key.split(".")[-1] for key in p.attributes), (
                m.name,
                p.attributes,
            )
