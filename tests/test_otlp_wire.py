"""OTLP on the wire, and with nothing listening.

The real OTLP exporters (gRPC and HTTP/protobuf, installed by ``streamguard.configure_otel()``)
send an instrumented app's telemetry to ``streamguard.testing.otlp_receiver``: spans carry the
receipt events, log records carry ``event_name`` and the receipt as their body, the metrics of
DESIGN section 6 arrive, and the receipts decoded from the wire pass ``streamguard verify``.

With the collector down, the same app runs exactly as before, no exception reaches it, and
every receipt is in the ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from conftest import _free_port
from streamguard._receipts.exports import receipts_in_line
from streamguard._receipts.signing import HmacSigner
from streamguard._receipts.verify import verify_main, verify_receipts
from streamguard._telemetry import names
from streamguard.testing.otlp_receiver import OTLPReceiver

TRAFFIC = Path(__file__).with_name("_otel_traffic.py")
KEY_HEX = "33" * 32
STREAMS_PER_WAVE = 7  # three providers x (completed, cancelled) + one budget rejection
PROTOCOLS = ("grpc", "http/protobuf")
METRICS = {
    names.TOKEN_USAGE[0],
    names.OPERATION_DURATION[0],
    names.TTFC[0],
    names.STREAMS[0],
    names.STREAMS_ACTIVE[0],
    names.TOKENS[0],
    names.COST[0],
    names.STOP_LATENCY[0],
    names.RECEIPTS[0],
}
EXPECTED_APP_VIEW = {
    "openai_completed": " w0 w1 w2 w3 w4 w5 w6 w7",
    "openai_cancelled": ["", " w0", " w1"],
    "anthropic_completed": " w0 w1 w2 w3 w4 w5 w6 w7",
    "anthropic_cancelled": [" w0", " w1", " w2"],
    "ollama_completed": " w0 w1 w2 w3 w4 w5 w6 w7",
    "ollama_cancelled": [" w0", " w1", " w2"],
    "budget": "BudgetExceeded",
}


def run_apps(envs: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Run tests/_otel_traffic.py once per protocol, concurrently; its stdout lines."""
    procs = {
        protocol: subprocess.Popen(
            [sys.executable, str(TRAFFIC), "otlp", protocol],
            env={
                **os.environ,
                "STREAMGUARD_SIGNING_KEY": KEY_HEX,
                "STREAMGUARD_KEY_ID": "wire",
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for protocol, env in envs.items()
    }
    out = {}
    for protocol, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{protocol}: {stderr}"
        assert "Traceback" not in stderr, f"{protocol}: {stderr}"
        out[protocol] = stdout.splitlines()
    return out


def attrs(key_values: Any) -> dict[str, Any]:
    return {kv.key: json_format.MessageToDict(kv.value) for kv in key_values}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rx:
        out = run_apps({p: rx.exporter_environment(p) for p in PROTOCOLS})
        for lines in out.values():
            assert json.loads(lines[0]) == EXPECTED_APP_VIEW
        yield rx


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_spans_carry_receipt_events(receiver: OTLPReceiver, transport: str) -> None:
    spans = receiver.spans(transport)
    events = [e for s in spans for e in s.events if e.name == names.RECEIPT_EVENT]
    assert len(events) == STREAMS_PER_WAVE
    for event in events:
        values = attrs(event.attributes)
        assert set(values) >= {
            names.RECEIPT_ID,
            names.RECEIPT_SEQ,
            names.RECEIPT_HASH,
            names.RECEIPT_JSON,
            names.RECEIPT_SIG_ALG,
            names.RECEIPT_SIG_KEY_ID,
            names.RECEIPT_SIG_VALUE,
        }
        assert values[names.RECEIPT_SIG_ALG] == {"stringValue": "hmac-sha256"}


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_log_records_carry_event_name_and_the_receipt_body(
    receiver: OTLPReceiver, transport: str
) -> None:
    records = [r for r in receiver.log_records(transport) if r.event_name == names.RECEIPT_EVENT]
    assert len(records) == STREAMS_PER_WAVE
    spans = {(s.trace_id, s.span_id): s for s in receiver.spans(transport)}
    outcomes = []
    for record in records:
        line = json.dumps({"body": json_format.MessageToDict(record.body)})
        (receipt,) = receipts_in_line(line)
        values = attrs(record.attributes)
        assert values[names.EVENT_ATTR] == {"stringValue": "receipt"}
        assert values[names.RECEIPT_ID] == {"stringValue": receipt["receipt_id"]}
        assert values[names.OUTCOME] == {"stringValue": receipt["outcome"]}
        # Emitted in the stream span's context: the log record points at the span that
        # carries the same receipt as an event.
        assert (record.trace_id.hex(), record.span_id.hex()) == (
            receipt["trace_id"],
            receipt["span_id"],
        )
        span = spans[(record.trace_id, record.span_id)]
        (event,) = [e for e in span.events if e.name == names.RECEIPT_EVENT]
        assert attrs(event.attributes)[names.RECEIPT_HASH] == {"stringValue": receipt["hash"]}
        outcomes.append((receipt["provider"], receipt["outcome"]))
    assert sorted(outcomes) == sorted(
        [(p, o) for p in ("openai", "anthropic", "ollama") for o in ("completed", "cancelled")]
        + [("openai", "rejected")]
    )


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_metrics_arrive(receiver: OTLPReceiver, transport: str) -> None:
    assert receiver.metric_names(transport) >= METRICS


def test_receipts_from_the_wire_pass_streamguard_verify(receiver: OTLPReceiver, tmp_path) -> None:
    logs = receiver.receipt_lines("logs")
    spans = receiver.receipt_lines("traces")
    verifier = HmacSigner(bytes.fromhex(KEY_HEX), key_id="wire").verifier()
    from_logs = verify_receipts(logs, verifier)
    assert (from_logs.passed, from_logs.receipts, from_logs.ledgers) == (True, 14, 2)
    from_spans = verify_receipts(spans, verifier)
    assert (from_spans.passed, from_spans.receipts, from_spans.ledgers) == (True, 14, 2)
    # The same receipts both ways: every span-event receipt is an exact duplicate of a log one.
    both = verify_receipts(logs + spans, verifier)
    assert (both.passed, both.receipts, both.duplicates) == (True, 14, 14)
    export = tmp_path / "otlp.jsonl"
    export.write_text("\n".join(logs + spans) + "\n")
    assert verify_main([str(export), "--hmac-key", KEY_HEX, "--key-id", "wire"]) == 0
    assert verify_main([str(export), "--hmac-key", "44" * 32]) == 1  # a wrong key fails


def test_collector_down_changes_nothing_for_the_app_and_the_ledger_keeps_every_receipt(
    tmp_path: Path,
) -> None:
    port = _free_port()  # bound and released: nothing listens there
    envs = {
        protocol: {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",  # seconds: bounds the final flush at exit
            "STREAMGUARD_LEDGER_PATH": str(tmp_path / f"ledger-{protocol.replace('/', '-')}"),
        }
        for protocol in PROTOCOLS
    }
    out = run_apps(envs)
    verifier = HmacSigner(bytes.fromhex(KEY_HEX), key_id="wire").verifier()
    for protocol, lines in out.items():
        assert json.loads(lines[0]) == EXPECTED_APP_VIEW, protocol
        ledger = Path(envs[protocol]["STREAMGUARD_LEDGER_PATH"]).read_text().splitlines()
        report = verify_receipts(ledger, verifier)
        assert (report.passed, report.receipts, report.ledgers) == (True, STREAMS_PER_WAVE, 1)


def test_receiver_accepts_gzip_and_refuses_what_does_not_parse() -> None:
    import gzip

    import httpx
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().event_name = "x"
    with OTLPReceiver() as rx, httpx.Client(base_url=rx.http_endpoint) as http:
        headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
        ok = http.post(
            "/v1/logs", content=gzip.compress(request.SerializeToString()), headers=headers
        )
        bad = http.post("/v1/logs", content=b"\xff not protobuf", headers={})
        missing = http.post("/v1/nothing", content=b"")
        assert (ok.status_code, bad.status_code, missing.status_code) == (200, 400, 404)
        assert [r.event_name for r in rx.log_records("http")] == ["x"]
    assert rx.received[0].signal == "logs"
