"""The ledger's hash chain, the JSON-lines ledger file and the in-memory sink."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streamguard._receipts import (
    GENESIS_HASH,
    Costs,
    Ed25519Signer,
    HmacSigner,
    HmacVerifier,
    JsonlLedgerSink,
    Ledger,
    Receipt,
    ReceiptSink,
    Times,
    Tokens,
    verify_files,
    verify_receipts,
)
from streamguard.testing.sinks import InMemoryReceiptSink, receipt_fields

SECRET = b"chain-test-secret-0123456789abcd"
SIGNER = HmacSigner(SECRET, "k1")


def test_seal_numbers_links_hashes_and_signs() -> None:
    ledger = Ledger(SIGNER, ledger_id="L1")

    receipts = [ledger.seal(receipt_fields()) for _ in range(3)]

    assert [r.seq for r in receipts] == [0, 1, 2]
    assert [r.prev_hash for r in receipts] == [GENESIS_HASH, receipts[0].hash, receipts[1].hash]
    assert {r.ledger_id for r in receipts} == {"L1"}
    for r in receipts:
        assert r.hash == hashlib.sha256(r.canonical_bytes()).hexdigest()
        assert SIGNER.verifier().verify(r.canonical_bytes(), r.signature)
    assert (ledger.next_seq, ledger.last_hash) == (3, receipts[-1].hash)


def test_default_ledger_id_is_a_fresh_uuid_hex() -> None:
    first, second = Ledger(SIGNER), Ledger(SIGNER)

    assert len(first.ledger_id) == 32 and int(first.ledger_id, 16) >= 0
    assert first.ledger_id != second.ledger_id


def test_seal_accepts_nested_parts_as_dataclasses_or_dicts() -> None:
    fields = receipt_fields(receipt_id="same", stream_id="same")
    as_dataclasses = {
        **fields,
        "tokens": Tokens(**fields["tokens"]),
        "cost": Costs(**fields["cost"]),
        "times": Times(**fields["times"]),
    }

    from_dicts = Ledger(SIGNER, "L").seal(fields)
    from_dataclasses = Ledger(SIGNER, "L").seal(as_dataclasses)

    assert from_dicts == from_dataclasses


def test_optional_fields_may_be_left_out_and_schema_may_be_given() -> None:
    fields = receipt_fields(schema="streamguard.receipt/1")
    for optional in ("request_max_tokens", "detail", "trace_id", "span_id", "attributes"):
        del fields[optional]

    receipt = Ledger(SIGNER).seal(fields)

    assert (receipt.detail, receipt.trace_id, dict(receipt.attributes)) == (None, None, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (receipt_fields(seq=4), "cannot accept: seq"),
        (receipt_fields(hash="0" * 64), "cannot accept: hash"),
        (receipt_fields(schema="streamguard.receipt/0"), "cannot accept: schema"),
        (receipt_fields(colour="blue"), "cannot accept: colour"),
        (
            {k: v for k, v in receipt_fields().items() if k != "tokens"},
            "missing field\\(s\\): tokens",
        ),
        (
            receipt_fields(tokens={"produced": 1}),
            "tokens has unknown .* missing field\\(s\\) \\['input'",
        ),
        (receipt_fields(times=[1, 2]), "times must be a Times or a mapping"),
    ],
)
def test_seal_rejects_bad_field_sets(fields: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        Ledger(SIGNER).seal(fields)


class _FlakySigner:
    alg = "hmac-sha256"
    key_id = "flaky"

    def __init__(self) -> None:
        self.fail_next = False

    def sign(self, data: bytes) -> str:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("HSM unavailable")
        return SIGNER.sign(data)


def test_a_failed_seal_consumes_no_seq_and_leaves_no_gap() -> None:
    signer = _FlakySigner()
    ledger = Ledger(signer, "L")
    first = ledger.seal(receipt_fields())

    with pytest.raises(ValueError, match="outcome"):
        ledger.seal(receipt_fields(outcome="exploded"))
    signer.fail_next = True
    with pytest.raises(RuntimeError, match="HSM"):
        ledger.seal(receipt_fields())
    second = ledger.seal(receipt_fields())

    assert (second.seq, second.prev_hash) == (1, first.hash)
    report = verify_receipts([first.to_json(), second.to_json()], HmacVerifier(SECRET, "flaky"))
    assert report.passed, report.first_error


def test_ledger_refuses_a_signer_with_an_unknown_algorithm() -> None:
    class Rsa:
        alg, key_id = "rsa-pss", "k"

        def sign(self, data: bytes) -> str:
            return "AA=="

    with pytest.raises(ValueError, match=r"signature\.alg"):
        Ledger(Rsa())


@pytest.mark.parametrize("signer", [SIGNER, Ed25519Signer(Ed25519PrivateKey.generate(), "ed")])
def test_concurrent_seals_get_unique_gap_free_seqs_and_a_valid_chain(
    signer: HmacSigner | Ed25519Signer,
) -> None:
    ledger = Ledger(signer)
    results: list[list[Receipt]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def worker(out: list[Receipt]) -> None:
        start.wait()
        for _ in range(200):
            out.append(ledger.seal(receipt_fields()))

    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    receipts = sorted((r for out in results for r in out), key=lambda r: r.seq)
    assert [r.seq for r in receipts] == list(range(1600))
    report = verify_receipts([r.to_json() for r in receipts], signer.verifier())
    assert (report.passed, report.receipts, report.ok) == (True, 1600, 1600), report.first_error


def test_repr_shows_ids_not_keys() -> None:
    assert repr(Ledger(SIGNER, "L")) == (
        "Ledger(ledger_id='L', next_seq=0, signer=HmacSigner(key_id='k1'))"
    )


# --- JSON-lines ledger file ----------------------------------------------------------------


def test_jsonl_sink_appends_one_line_per_receipt_and_the_file_verifies(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "ledger.jsonl"
    ledger = Ledger(SIGNER)
    receipts = [ledger.seal(receipt_fields()) for _ in range(3)]

    with JsonlLedgerSink(path) as sink:
        assert isinstance(sink, ReceiptSink)
        for r in receipts[:2]:
            sink.emit(r)
    with JsonlLedgerSink(path) as sink:  # reopening appends
        sink.emit(receipts[2])

    lines = path.read_text().splitlines()
    assert [Receipt.from_dict(json.loads(line)) for line in lines] == receipts
    report = verify_files([str(path)], SIGNER.verifier())
    assert (report.passed, report.receipts) == (True, 3)


@pytest.mark.parametrize("fsync", [True, False])
def test_jsonl_sink_fsyncs_each_line_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    sink = JsonlLedgerSink(tmp_path / "l.jsonl", fsync=fsync)
    receipt = Ledger(SIGNER).seal(receipt_fields())

    sink.emit(receipt)
    sink.emit(receipt)
    sink.close()

    assert len(synced) == (2 if fsync else 0)


def test_jsonl_sink_lines_from_many_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    sink = JsonlLedgerSink(path, fsync=False)
    ledger = Ledger(SIGNER)

    def worker() -> None:
        for _ in range(50):
            sink.emit(ledger.seal(receipt_fields(detail="x" * 5000)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()

    report = verify_files([str(path)], SIGNER.verifier(), sort=True)
    assert (report.passed, report.receipts) == (True, 200), report.first_error


def test_jsonl_sink_errors_raise_oserror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receipt = Ledger(SIGNER).seal(receipt_fields())
    with pytest.raises(OSError, match="Is a directory"):
        JsonlLedgerSink(tmp_path)

    sink = JsonlLedgerSink(tmp_path / "l.jsonl")

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", disk_full)
        with pytest.raises(OSError, match="No space"):
            sink.emit(receipt)
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(OSError, match="closed"):
        sink.emit(receipt)
    assert "closed" in repr(sink)


# --- in-memory sink ------------------------------------------------------------------------


def test_in_memory_sink_collects_snapshots_and_filters_by_stream() -> None:
    sink = InMemoryReceiptSink()
    ledger = Ledger(SIGNER)
    a, b, c = (ledger.seal(receipt_fields(stream_id=s)) for s in ("s1", "s2", "s1"))

    for r in (a, b, c):
        sink.emit(r)
    snapshot = sink.receipts
    snapshot.clear()

    assert isinstance(sink, ReceiptSink)
    assert sink.receipts == [a, b, c] and len(sink) == 3
    assert sink.by_stream("s1") == [a, c]
    sink.clear()
    assert sink.receipts == []


def test_in_memory_sink_wait_for_returns_when_receipts_arrive_from_another_thread() -> None:
    sink = InMemoryReceiptSink()
    receipt = Ledger(SIGNER).seal(receipt_fields())
    timer = threading.Timer(0.05, lambda: [sink.emit(receipt), sink.emit(receipt)])
    timer.start()

    assert sink.wait_for(2, timeout=5) == [receipt, receipt]
    timer.join()
    with pytest.raises(TimeoutError, match=r"expected 3 receipt\(s\) within 0\.01s, got 2"):
        sink.wait_for(3, timeout=0.01)


async def test_in_memory_sink_wait_for_async_does_not_block_the_loop() -> None:
    sink = InMemoryReceiptSink()
    receipt = Ledger(SIGNER).seal(receipt_fields())
    asyncio.get_running_loop().call_later(0.02, sink.emit, receipt)

    assert await sink.wait_for_async(1, timeout=5) == [receipt]
    with pytest.raises(TimeoutError, match="got 1"):
        await sink.wait_for_async(2, timeout=0.01)
