"""verify: every tampering is caught and names the receipt; every export shape is read."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import streamguard
from streamguard._receipts import (
    Ed25519Signer,
    Ed25519Verifier,
    HmacSigner,
    HmacVerifier,
    Ledger,
    Receipt,
    Verifier,
    VerifyReport,
    verify_files,
    verify_main,
    verify_receipts,
)
from streamguard.exceptions import ReceiptVerificationError
from streamguard.testing.sinks import receipt_fields

SECRET = b"verify-test-secret-0123456789abc"
HMAC = HmacSigner(SECRET, "k1")
ED25519 = Ed25519Signer(Ed25519PrivateKey.generate(), "ed-1")


@pytest.fixture(params=["hmac", "ed25519"])
def signer(request: pytest.FixtureRequest) -> HmacSigner | Ed25519Signer:
    return HMAC if request.param == "hmac" else ED25519


def _chain(signer: HmacSigner | Ed25519Signer, n: int = 5, ledger_id: str = "L1") -> list[Receipt]:
    ledger = Ledger(signer, ledger_id=ledger_id)
    return [ledger.seal(receipt_fields(receipt_id=f"{ledger_id}-r{i}")) for i in range(n)]


def _lines(receipts: list[Receipt]) -> list[str]:
    return [r.to_json() + "\n" for r in receipts]


def _strict(signer: HmacSigner | Ed25519Signer) -> Verifier:
    """A verifier pinned to the signer's key id, as an auditor would run it."""
    if isinstance(signer, HmacSigner):
        return HmacVerifier(SECRET, signer.key_id)
    return signer.verifier()


def test_an_untouched_chain_verifies(signer: HmacSigner | Ed25519Signer) -> None:
    report = verify_receipts(_lines(_chain(signer)), _strict(signer))

    assert report == VerifyReport(receipts=5, ledgers=1, ok=5, duplicates=0, errors=())
    assert report.passed and report.first_error is None
    report.raise_if_failed()


# --- tampering -----------------------------------------------------------------------------


def _leaves(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)


_LEAVES = list(_leaves(_chain(HMAC, 1)[0].to_dict()))
_ALTERNATIVES = {
    "outcome": "completed",
    "reason": "consumer_cancelled",  # same category, so only the hash can tell
    "category": "policy",
    "usage_source": "provider",
    "currency": "EUR",
    "alg": "ed25519",
}


def _edit(value: Any, key: str) -> Any:
    if value is None:
        return "edited"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, dict):
        return {"added": "x"}
    if key in _ALTERNATIVES:
        return _ALTERNATIVES[key] if value != _ALTERNATIVES[key] else "hmac-sha256"
    if value.isdigit():  # times: nanoseconds as strings
        return str(int(value) + 1)
    if len(value) in (16, 32, 64) and all(c in "0123456789abcdef" for c in value):
        return value[:-1] + ("0" if value[-1] != "0" else "1")
    if key == "value":  # the signature: change one byte of it, keep it valid base64
        return ("B" if value[0] != "B" else "C") + value[1:]
    if value[0].isdigit():  # money
        return value + "1"
    return value + "x"


@pytest.mark.parametrize("path", _LEAVES, ids=[".".join(p) for p in _LEAVES])
def test_editing_any_field_fails_and_names_the_receipt(
    signer: HmacSigner | Ed25519Signer, path: tuple[str, ...]
) -> None:
    receipts = _chain(signer)
    target = receipts[2].to_dict()
    parent = target
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = _edit(parent[path[-1]], path[-1])
    lines = _lines(receipts)
    lines[2] = json.dumps(target) + "\n"

    report = verify_receipts(lines, _strict(signer), source="ledger.jsonl")

    first = report.first_error
    assert first is not None and not report.passed
    assert (first.file, first.line, first.receipt_id) == ("ledger.jsonl", 3, target["receipt_id"])
    expected = {
        ("schema",): "malformed receipt",
        ("category",): "malformed receipt",
        ("signature", "alg"): "signed with",
        ("signature", "key_id"): "signed with key id",
        ("signature", "value"): "signature does not verify",
    }.get(path, "hash mismatch: the receipt was edited after it was sealed")
    assert first.reason.startswith(expected), first.reason
    assert str(first).startswith(f"ledger.jsonl:3: receipt {target['receipt_id']}: ")


def test_a_resealed_edit_without_the_key_fails_on_the_signature(
    signer: HmacSigner | Ed25519Signer,
) -> None:
    # The attacker edits seq 2 and re-seals it and everything after it with their own key:
    # every hash and link is right, because they depend on content only. Signatures are not.
    receipts = _chain(signer)
    forged = Ledger(HmacSigner(b"attacker-key-0123456789abcdefgh", signer.key_id), "L1")
    for r in receipts[:2]:
        forged.seal(_unsealed(r))
    fakes = [forged.seal(_unsealed(receipts[2]) | {"detail": "nothing to see"})]
    fakes += [forged.seal(_unsealed(r)) for r in receipts[3:]]
    lines = _lines(receipts[:2]) + _lines(fakes)

    report = verify_receipts(lines, _strict(signer))

    assert [(e.line, e.receipt_id) for e in report.errors] == [
        (3, "L1-r2"),
        (4, "L1-r3"),
        (5, "L1-r4"),
    ]
    assert report.errors[0].reason.startswith(
        ("signature does not verify", "signed with hmac-sha256 but the verification key is")
    )


def _unsealed(r: Receipt) -> dict[str, Any]:
    sealed = {"schema", "ledger_id", "seq", "prev_hash", "hash", "signature"}
    parts = {"tokens": r.tokens, "cost": r.cost, "times": r.times}
    return {k: v for k, v in r.to_dict().items() if k not in sealed} | parts


def test_reordering_two_receipts_fails(signer: HmacSigner | Ed25519Signer) -> None:
    lines = _lines(_chain(signer))
    lines[2], lines[3] = lines[3], lines[2]

    first = verify_receipts(lines, _strict(signer)).first_error

    assert first is not None
    assert (first.line, first.receipt_id) == (3, "L1-r3")
    assert first.reason == "seq 3 follows seq 1: receipts are out of order (reordered)"


def test_deleting_a_receipt_in_the_middle_fails(signer: HmacSigner | Ed25519Signer) -> None:
    lines = _lines(_chain(signer))
    del lines[2]

    report = verify_receipts(lines, _strict(signer))

    assert [(e.line, e.receipt_id, e.reason) for e in report.errors] == [
        (3, "L1-r3", "seq 3 follows seq 1: receipt(s) missing (seq 2)")
    ]
    assert (report.receipts, report.ok) == (4, 3)


def test_deleting_the_first_receipts_fails(signer: HmacSigner | Ed25519Signer) -> None:
    lines = _lines(_chain(signer))[2:]

    first = verify_receipts(lines, _strict(signer)).first_error

    assert first is not None and (first.line, first.receipt_id) == (1, "L1-r2")
    assert first.reason.startswith("ledger L1 starts at seq 2: seq 0..1 missing")
    assert verify_receipts(lines, _strict(signer), allow_partial=True).passed


def test_a_wrong_key_fails(signer: HmacSigner | Ed25519Signer) -> None:
    other: Verifier = (
        HmacVerifier(b"some-other-secret-0123456789abcd")
        if isinstance(signer, HmacSigner)
        else Ed25519Verifier(Ed25519PrivateKey.generate().public_key())
    )

    first = verify_receipts(_lines(_chain(signer)), other).first_error

    assert first is not None and (first.line, first.receipt_id) == (1, "L1-r0")
    assert first.reason.startswith(f"signature does not verify with key id {signer.key_id!r}")


def test_a_wrong_key_id_or_algorithm_fails(signer: HmacSigner | Ed25519Signer) -> None:
    lines = _lines(_chain(signer))
    pinned: Verifier
    if isinstance(signer, HmacSigner):
        pinned, foreign = HmacVerifier(SECRET, "k2"), ED25519.verifier()
    else:
        pinned, foreign = Ed25519Verifier(ED25519.public_key(), "ed-2"), HMAC.verifier()

    wrong_id = verify_receipts(lines, pinned).first_error
    wrong_alg = verify_receipts(lines, foreign).first_error

    assert wrong_id is not None and wrong_id.reason == (
        f"signed with key id {signer.key_id!r} but only key id {pinned.key_id!r} is accepted"
    )
    assert wrong_alg is not None
    assert wrong_alg.reason == f"signed with {signer.alg} but the verification key is {foreign.alg}"


def test_a_truncated_line_fails_and_still_names_the_receipt() -> None:
    lines = _lines(_chain(HMAC))
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"

    report = verify_receipts(lines, HMAC.verifier())

    first = report.first_error
    assert first is not None and (first.line, first.receipt_id) == (2, "L1-r1")
    assert first.reason.startswith("the line is not valid JSON, so it was truncated or corrupted")
    # The lost receipt also breaks the chain at the next line.
    assert report.errors[1].reason == "seq 2 follows seq 0: receipt(s) missing (seq 1)"
    with pytest.raises(ReceiptVerificationError, match="L1-r1") as info:
        report.raise_if_failed()
    assert (info.value.receipt_id, info.value.line) == ("L1-r1", 2)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "the line is not valid JSON"),
        ("[1, 2]", "the line is JSON but not an object"),
        ('{"hello": "world"}', "the line holds no receipt"),
        ('{"body": "plain text log"}', "the log body is a string but not JSON"),
        ('{"attributes": {"k": "v"}}', "the span event attributes have no"),
    ],
)
def test_lines_without_a_receipt_fail(line: str, reason: str) -> None:
    lines = [*_lines(_chain(HMAC, 2)), line]

    first = verify_receipts(lines, HMAC.verifier()).first_error

    assert first is not None and first.line == 3 and first.receipt_id is None
    assert first.reason.startswith(reason)


def test_empty_input_fails_and_blank_lines_are_skipped() -> None:
    assert verify_receipts(["\n", "  \n"], HMAC.verifier()).errors[0].reason == (
        "no receipts found in the input"
    )
    assert verify_receipts(["\n", *_lines(_chain(HMAC)), "\n"], HMAC.verifier()).passed


def test_exact_duplicates_are_tolerated_but_a_fork_is_not() -> None:
    receipts = _chain(HMAC)
    fork = Ledger(HMAC, "L1").seal(receipt_fields(receipt_id="other"))  # a second seq 0

    duplicated = verify_receipts(_lines(receipts) + _lines(receipts[:2]), HMAC.verifier())
    forked = verify_receipts([*_lines(receipts), fork.to_json()], HMAC.verifier())

    assert (duplicated.passed, duplicated.receipts, duplicated.duplicates) == (True, 5, 2)
    assert forked.first_error is not None and forked.first_error.reason.startswith(
        "seq 0 of ledger L1 appears twice with different contents (first at <input>:1)"
    )


def test_a_replayed_receipt_id_fails() -> None:
    ledger = Ledger(HMAC, "L1")
    fields = receipt_fields(receipt_id="same")
    lines = [ledger.seal(fields).to_json(), ledger.seal(fields).to_json()]

    first = verify_receipts(lines, HMAC.verifier()).first_error

    assert first is not None and (first.line, first.receipt_id) == (2, "same")
    assert first.reason.startswith("receipt_id already used by seq 0 of ledger L1 at <input>:1")


def test_sort_mode_accepts_newest_first_exports_and_ledgers_may_interleave() -> None:
    a, b = _chain(HMAC, 4, "A"), _chain(HMAC, 3, "B")
    interleaved = [x for pair in zip(a, b, strict=False) for x in pair] + a[3:]
    newest_first = list(reversed(_lines(a)))

    assert verify_receipts(_lines(interleaved), HMAC.verifier()).ledgers == 2
    assert verify_receipts(_lines(interleaved), HMAC.verifier()).passed
    assert not verify_receipts(newest_first, HMAC.verifier()).passed
    assert verify_receipts(newest_first, HMAC.verifier(), sort=True).passed
    gap = _lines(a)[:1] + _lines(a)[2:]
    sorted_gap = verify_receipts(list(reversed(gap)), HMAC.verifier(), sort=True).first_error
    assert sorted_gap is not None and "receipt(s) missing (seq 1)" in sorted_gap.reason


# --- export shapes -------------------------------------------------------------------------


def _otlp_logs(receipts: list[Receipt]) -> dict[str, Any]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("streamguard")
    logger.emit(body="an unrelated log record", attributes={"x": 1})
    for r in receipts:
        logger.emit(
            body=r.to_dict(),
            event_name="streamguard.receipt",
            attributes={"streamguard.event": "receipt"},
        )
    return MessageToDict(encode_logs(exporter.get_finished_logs()))


def _otlp_spans(receipts: list[Receipt], *, snake_case: bool) -> dict[str, Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("streamguard")
    for r in receipts:
        with tracer.start_as_current_span("chat gpt-4o") as span:
            span.add_event("first chunk")
            span.add_event("streamguard.receipt", r.to_span_event_attributes())
    return MessageToDict(
        encode_spans(exporter.get_finished_spans()), preserving_proto_field_name=snake_case
    )


def _shapes(receipts: list[Receipt]) -> dict[str, list[str]]:
    dicts = [r.to_dict() for r in receipts]
    attrs = [r.to_span_event_attributes() for r in receipts]
    without_hash = [{k: v for k, v in a.items() if k != "streamguard.receipt.hash"} for a in attrs]
    return {
        "ledger": _lines(receipts),
        "log-body-object": [json.dumps({"body": d, "severity": "INFO"}) for d in dicts],
        "log-body-string": [json.dumps({"body": json.dumps(d)}) for d in dicts],
        "loki-logcli-jsonl": [json.dumps({"labels": {}, "line": json.dumps(d)}) for d in dicts],
        "span-event": [json.dumps({"name": "streamguard.receipt", "attributes": a}) for a in attrs],
        "span-event-no-hash": [json.dumps({"attributes": a}) for a in without_hash],
        "span-event-otlp-list": [
            json.dumps(
                {"attributes": [{"key": k, "value": {"stringValue": str(v)}} for k, v in a.items()]}
            )
            for a in attrs
        ],
        "otlp-json-logs": [json.dumps(_otlp_logs(receipts))],
        "otlp-json-spans": [json.dumps(_otlp_spans(receipts, snake_case=False))],
        "otlp-json-spans-snake": [json.dumps(_otlp_spans(receipts, snake_case=True))],
    }


_SHAPE_NAMES = list(_shapes(_chain(HMAC, 1)))


@pytest.mark.parametrize("shape", _SHAPE_NAMES)
def test_every_export_shape_verifies_and_tampering_is_caught(shape: str) -> None:
    receipts = _chain(HMAC, 3, ledger_id=f"L-{shape}")
    edited = _chain(HMAC, 3, ledger_id=f"L-{shape}")  # same ids, other signatures
    good = _shapes(receipts)[shape]

    report = verify_receipts(good, HMAC.verifier())
    mixed = verify_receipts(_shapes([*receipts[:2], edited[2]])[shape], HMAC.verifier())

    assert (report.passed, report.receipts, report.ok) == (True, 3, 3), report.first_error
    assert mixed.first_error is not None  # seq 2 of a different chain: prev_hash does not link
    assert mixed.first_error.receipt_id == f"L-{shape}-r2"


def test_span_export_from_sdk_to_json_verifies() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    receipts = _chain(HMAC, 2)
    for r in receipts:
        with provider.get_tracer("t").start_as_current_span("chat gpt-4o") as span:
            span.add_event("streamguard.receipt", r.to_span_event_attributes())

    lines = [json.dumps(json.loads(s.to_json())) for s in exporter.get_finished_spans()]

    assert verify_receipts(lines, HMAC.verifier()).passed


def test_the_same_receipts_from_ledger_and_loki_verify_together(tmp_path: Path) -> None:
    receipts = _chain(ED25519)
    ledger, loki = tmp_path / "ledger.jsonl", tmp_path / "loki.jsonl"
    ledger.write_text("".join(_lines(receipts)))
    loki.write_text("\n".join(_shapes(receipts)["loki-logcli-jsonl"]) + "\n")

    report = verify_files([str(ledger), str(loki)], ED25519.verifier())

    assert (report.passed, report.receipts, report.duplicates) == (True, 5, 5)


# --- command line --------------------------------------------------------------------------


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(_lines(_chain(ED25519))))
    return path


@pytest.fixture
def public_pem(tmp_path: Path) -> Path:
    path = tmp_path / "verify.pem"
    path.write_text(ED25519.public_key_pem())
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STREAMGUARD_"):
            monkeypatch.delenv(name)


def test_cli_exits_0_when_everything_verifies(
    clean_env: None, ledger_file: Path, public_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = verify_main([str(ledger_file), "--key", str(public_pem), "--key-id", "ed-1"])

    out = capsys.readouterr().out
    assert code == 0
    assert "5 receipt(s) in 1 ledger(s) from 1 file(s) [ed25519, key id ed-1]: 5 ok" in out
    assert "OK: every hash, signature and chain link verifies" in out


def test_cli_exits_1_naming_the_first_bad_receipt(
    clean_env: None, ledger_file: Path, public_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ledger_file.read_text().splitlines(keepends=True)
    ledger_file.write_text("".join(lines[:1] + lines[2:]))

    code = verify_main([str(ledger_file), "--key", str(public_pem)])

    out = capsys.readouterr().out
    assert code == 1
    assert f"FAILED: {ledger_file}:2: receipt L1-r2: seq 2 follows seq 0: receipt(s) missing" in out


def test_cli_reads_keys_from_the_environment_and_stdin(
    clean_env: None,
    ledger_file: Path,
    public_pem: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STREAMGUARD_VERIFY_KEY_FILE", str(public_pem))
    monkeypatch.setattr(sys, "stdin", io.StringIO(ledger_file.read_text()))

    assert verify_main(["-"]) == 0
    monkeypatch.delenv("STREAMGUARD_VERIFY_KEY_FILE")
    monkeypatch.setenv("STREAMGUARD_SIGNING_KEY", SECRET.hex())
    hmac_file = ledger_file.with_name("hmac.jsonl")
    hmac_file.write_text("".join(_lines(_chain(HMAC))))
    assert verify_main([str(hmac_file)]) == 0
    assert verify_main([str(ledger_file)]) == 1  # Ed25519 receipts, HMAC key
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x.jsonl"], "STREAMGUARD_VERIFY_KEY_FILE"),
        (["x.jsonl", "--key", "/nonexistent/key.pem"], "--key does not name an existing file"),
        (["x.jsonl", "--hmac-key", "zz"], "--hmac-key"),
        (["x.jsonl", "--hmac-key", SECRET.hex(), "--key-id", "has space"], "--key-id"),
        (["/nonexistent/ledger.jsonl", "--hmac-key", SECRET.hex()], "cannot read"),
        ([], "the following arguments are required: FILE"),
        (["x.jsonl", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_exits_2_for_usage_and_configuration_errors(
    clean_env: None, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = verify_main(argv)

    err = capsys.readouterr().err
    assert code == 2
    assert message in " ".join(err.split())
    assert SECRET.hex() not in err


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main(["--help"]) == 0
    assert "--hmac-key" in capsys.readouterr().out


def test_cli_runs_as_a_module(ledger_file: Path, public_pem: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGUARD_")}
    src = str(Path(streamguard.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "streamguard._receipts.verify", str(ledger_file)]

    ok = subprocess.run(
        [*command, "--key", str(public_pem)], env=env, capture_output=True, text=True, timeout=60
    )
    ledger_file.write_text(ledger_file.read_text().replace('"produced":40', '"produced":41', 1))
    bad = subprocess.run(
        [*command, "--key", str(public_pem)], env=env, capture_output=True, text=True, timeout=60
    )

    assert (ok.returncode, ok.stderr) == (0, "")
    assert bad.returncode == 1
    assert "receipt L1-r0: hash mismatch" in bad.stdout
