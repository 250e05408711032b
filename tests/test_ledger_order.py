"""One writer order: a ledger file's line order is its chain order, under any number of threads
and with several chains (processes) in one file; the file is created 0600."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import streamguard
from streamguard._receipts.chain import Ledger
from streamguard._receipts.ledger import JsonlLedgerSink
from streamguard._receipts.signing import HmacSigner
from streamguard._receipts.verify import verify_receipts
from streamguard.testing import Upstream
from streamguard.testing.sinks import receipt_fields

KEY = "33" * 32
THREADS, ROUNDS = 16, 40


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.005) as up:
        yield up


def test_16_threads_x_40_streams_closed_at_once_keep_the_file_in_chain_order(
    upstream: Upstream, tmp_path: Path
) -> None:
    ledger = tmp_path / "receipts.jsonl"
    streamguard.instrument(signing_key=KEY, ledger_path=str(ledger))
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)
    try:
        client = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)

        def worker() -> None:
            try:
                for _ in range(ROUNDS):
                    stream = client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": "order"}],
                        max_tokens=200,
                        stream=True,
                    )
                    next(iter(stream))
                    barrier.wait(30)  # all 16 close at the same instant
                    stream.close()
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        streamguard.uninstrument()
    assert not errors, errors[:3]
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(lines) == THREADS * ROUNDS
    assert len({line["ledger_id"] for line in lines}) == 1
    assert [line["seq"] for line in lines] == list(range(THREADS * ROUNDS))
    assert all(line["reason"] == "consumer_closed" for line in lines)
    verified = subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "verify", "--hmac-key", KEY, str(ledger)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "640 receipt(s) in 1 ledger(s)" in verified.stdout


def test_several_chains_interleaved_in_one_file_verify_each_in_file_order() -> None:
    signer = HmacSigner(bytes(32), key_id="k")
    a, b = Ledger(signer), Ledger(signer)
    lines = []
    for i in range(6):
        ledger = a if i % 3 else b  # b, a, a, b, a, a: interleaved, each chain in order
        lines.append(ledger.seal(receipt_fields(stream_id=f"s{i}")).to_json())
    report = verify_receipts(lines, signer.verifier())
    assert (report.passed, report.receipts, report.ledgers) == (True, 6, 2)
    # Swap seq 1 and 2 of chain a: the other chain is unaffected, a is reported reordered.
    lines[2], lines[4] = lines[4], lines[2]
    report = verify_receipts(lines, signer.verifier())
    assert not report.passed
    first = report.first_error
    assert first is not None and first.line == 3 and "out of order" in first.reason


def test_ledger_file_is_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "receipts.jsonl"
    old = os.umask(0o022)
    try:
        JsonlLedgerSink(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # An existing file keeps the mode its operator gave it.
    path.chmod(0o640)
    JsonlLedgerSink(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
