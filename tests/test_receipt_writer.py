"""Receipts are sealed off the application's thread and never lost: the receipt writer.

A guarded ``close()`` hands the stream to one writer thread (bounded queue, FIFO, one fsync per
batch). What the application sees stays truthful: ``handle.receipt`` waits for the seal, every
receipt reaches the ledger at a normal exit (with no flush or uninstrument), a fork neither
inherits the parent's queued receipts nor loses them, ``kill -9`` loses at most what was queued
and never leaves a gap, and a failing disk never breaks the application.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import streamguard
from streamguard import _runtime
from streamguard._receipts.writer import DEFAULT_CAPACITY, ReceiptWriter
from streamguard.testing import Upstream

KEY = "44" * 32
MESSAGES = [{"role": "user", "content": "writer"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.002) as up:
        yield up


def _verify(ledger: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "verify", "--hmac-key", KEY, str(ledger)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lines(ledger: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ledger.read_text().splitlines()]


# The application of the subprocess tests: 16 threads open a stream each, read one chunk, and
# close all at the same instant, ROUNDS times; then the script ends in the way MODE says.
_APP = textwrap.dedent(
    """
    import os, sys, threading, time
    import openai, streamguard

    url, ledger, mode, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    streamguard.instrument(signing_key="@KEY@", ledger_path=ledger)
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    barrier = threading.Barrier(16)
    closed = []
    said = threading.Lock()

    def worker():
        for _ in range(rounds):
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                max_tokens=200, stream=True)
            next(iter(stream))
            barrier.wait(30)
            stream.close()
            with said:
                closed.append(1)
                if mode == "kill":
                    os.write(1, b"closed %d\\n" % len(closed))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if mode == "fork":
        queued = streamguard._runtime.get_runtime().writer.pending
        pid = os.fork()
        if pid == 0:  # the child: one stream of its own, then a normal exit
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                max_tokens=200, stream=True)
            next(iter(stream))
            stream.close()
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), "queued at fork", queued, flush=True)
    print("done", len(closed), flush=True)
    if mode == "kill":
        time.sleep(60)
    # a normal exit: no streamguard.flush(), no uninstrument()
    """
).replace("@KEY@", KEY)


def _run_app(upstream: Upstream, ledger: Path, mode: str, rounds: int) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _APP, upstream.openai_base_url, str(ledger), mode, str(rounds)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_16_threads_closing_at_once_then_a_normal_exit_leave_every_receipt_on_disk(
    upstream: Upstream, tmp_path: Path
) -> None:
    ledger = tmp_path / "receipts.jsonl"
    out = _run_app(upstream, ledger, "exit", rounds=8)
    assert "done 128" in out
    lines = _lines(ledger)
    assert len(lines) == 128
    assert [line["seq"] for line in lines] == list(range(128))  # chain order = line order
    assert len({line["stream_id"] for line in lines}) == 128
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "128 receipt(s) in 1 ledger(s)" in verified.stdout


def test_a_fork_with_receipts_queued_leaves_each_receipt_to_its_own_process(
    upstream: Upstream, tmp_path: Path
) -> None:
    ledger = tmp_path / "receipts.jsonl"
    out = _run_app(upstream, ledger, "fork", rounds=4)
    assert "child 0" in out and "done 64" in out, out
    lines = _lines(ledger)
    by_ledger = Counter(line["ledger_id"] for line in lines)
    # The parent's 64 streams sealed once, by the parent; the child's one stream by the child,
    # on a chain of its own: no parent receipt is sealed twice or lost across the fork.
    assert sorted(by_ledger.values()) == [1, 64], by_ledger
    assert len({line["stream_id"] for line in lines}) == 65
    for ledger_id in by_ledger:
        seqs = [line["seq"] for line in lines if line["ledger_id"] == ledger_id]
        assert seqs == list(range(len(seqs)))
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_kill_9_loses_at_most_the_queued_receipts_and_never_leaves_a_gap(
    upstream: Upstream, tmp_path: Path
) -> None:
    ledger = tmp_path / "receipts.jsonl"
    with subprocess.Popen(
        [sys.executable, "-c", _APP, upstream.openai_base_url, str(ledger), "kill", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            closed = 0
            for line in proc.stdout:  # kill it mid-burst, while streams are still closing
                closed = int(line.split()[1])
                if closed >= 300:
                    break
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    lines = _lines(ledger)  # every line whole: a receipt is written in one append
    assert closed - DEFAULT_CAPACITY <= len(lines) <= 640
    assert [line["seq"] for line in lines] == list(range(len(lines)))
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_handle_receipt_of_a_closed_stream_waits_for_the_seal_in_16_threads(
    upstream: Upstream, sink: Any, instrument_with: Any
) -> None:
    instrument_with()
    client = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
    barrier = threading.Barrier(16)
    seen: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, stream=True
            )
            handle = streamguard.handle_of(stream)
            next(iter(stream))
            assert handle.receipt is None  # running: no receipt, and no wait
            barrier.wait(30)
            stream.close()
            seen.append(handle.receipt)  # right after close(): no flush, no wait of our own
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert len(seen) == 16 and all(r is not None for r in seen)
    assert {r.reason for r in seen} == {"consumer_closed"}
    assert sorted(r.seq for r in seen) == list(range(16))
    assert {r.receipt_id for r in seen} == {r.receipt_id for r in sink.receipts}


@pytest.fixture
def instrument_sinks(sink: Any) -> Iterator[Any]:
    """``instrument()`` with the test's in-memory sink plus the given ones."""

    def instrument(*more: Any) -> None:
        streamguard.instrument(signing_key=KEY, sinks=[sink, *more])

    yield instrument
    streamguard.uninstrument()


def test_close_returns_before_the_ledger_write_and_the_receipt_follows(
    upstream: Upstream, sink: Any, instrument_sinks: Any
) -> None:
    """A wedged disk does not hold up close(): the receipt waits on the writer's thread."""
    release = threading.Event()

    class WedgedDisk:
        in_chain_order = True

        def emit(self, receipt: Any) -> None:
            release.wait(30)

    instrument_sinks(WedgedDisk())
    client = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, stream=True
    )
    handle = streamguard.handle_of(stream)
    next(iter(stream))
    stream.close()  # returns although the ledger write has not happened
    assert handle.wait_receipt(0.2) is None
    release.set()
    receipt = handle.wait_receipt(10)
    assert receipt is not None and receipt.reason == "consumer_closed"
    assert [r.receipt_id for r in sink.receipts] == [receipt.receipt_id]


def test_a_full_queue_seals_on_the_caller_and_loses_nothing(
    upstream: Upstream, sink: Any, instrument_sinks: Any
) -> None:
    entered, release = threading.Event(), threading.Event()

    class SlowExporter:  # not a chain-order sink: the writer is stuck outside the chain lock
        def emit(self, receipt: Any) -> None:
            if threading.current_thread().name == "streamguard-receipts":
                entered.set()
                release.wait(30)  # the writer is stuck; a caller sealing inline is not

    instrument_sinks(SlowExporter())
    runtime = _runtime.get_runtime()
    runtime.writer = ReceiptWriter(runtime._seal_and_emit, report=_runtime.report_fault, capacity=2)
    client = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
    handles = []
    for i in range(6):
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, stream=True
        )
        handles.append(streamguard.handle_of(stream))
        next(iter(stream))
        stream.close()
        if i == 0:
            assert entered.wait(10)
    # One on the stuck writer, two queued, three sealed by close() itself.
    assert [h._core.receipt is not None for h in handles] == [False] * 3 + [True] * 3
    release.set()
    receipts = [h.wait_receipt(10) for h in handles]
    assert all(r is not None for r in receipts)
    assert sorted(r.seq for r in receipts if r is not None) == list(range(6))
    assert len(sink.receipts) == 6


def test_a_full_disk_never_breaks_the_app_is_reported_once_and_telemetry_still_has_receipts(
    upstream: Upstream, otel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (every write fails with ENOSPC)")
    streamguard.instrument(signing_key=KEY, ledger_path="/dev/full")
    otel.clear()
    try:
        client = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
        with caplog.at_level(logging.WARNING, logger="streamguard"):
            for _ in range(5):
                stream = client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, stream=True
                )
                next(iter(stream))
                stream.close()  # no exception reaches the application
            assert streamguard.flush(10)
            writer_thread = _runtime.get_runtime().writer._thread
            assert writer_thread is not None and writer_thread.is_alive()
        events = [
            event
            for span in otel.spans.get_finished_spans()
            for event in span.events
            if event.name == "streamguard.receipt"
        ]
        assert len(events) == 5
        assert len([r for r in otel.logs.get_finished_logs()]) >= 5
    finally:
        streamguard.uninstrument()
    places = {where for where, _ in _runtime.faults}
    del _runtime.faults[:]  # expected here; the autouse fixture fails on any other fault
    assert places == {"sink.JsonlLedgerSink"}
    warnings = [r for r in caplog.records if "JsonlLedgerSink" in r.getMessage()]
    assert len(warnings) <= 1  # reported once per process (0 if an earlier test reported it)


def test_flush_from_the_writer_thread_returns_at_once() -> None:
    results: list[bool] = []
    writer: ReceiptWriter[int] = ReceiptWriter(
        lambda job: results.append(writer.flush(5.0)), report=lambda where, exc: None
    )
    t0 = time.monotonic()
    assert writer.submit(1)
    assert writer.flush(5.0)
    assert results == [True] and time.monotonic() - t0 < 4.0
    assert writer.close(5.0)
    assert not writer.submit(2)  # closed: the caller seals inline


def test_a_burst_is_sealed_in_order_in_batches_and_a_quiet_writer_blocks_again() -> None:
    """Jobs submitted while the writer lingers after a batch (no wake-up) still all run, in
    submit order, in fewer batches than jobs; a flush during the linger returns; once the
    linger is over the thread blocks on its queue and the next submit still runs."""
    ran: list[int] = []
    batches: list[int] = []
    writer: ReceiptWriter[int] = ReceiptWriter(
        ran.append,
        report=lambda where, exc: None,
        after_batch=lambda: batches.append(len(ran)),
        coalesce=0.005,
        linger=0.2,
    )
    for i in range(200):
        assert writer.submit(i)
    assert writer.flush(10.0)
    assert ran == list(range(200))
    assert 1 <= len(batches) < 200 and batches[-1] == 200
    assert writer.submit(200)  # lingering: queued without waking the thread
    assert writer.flush(10.0) and ran[-1] == 200
    time.sleep(0.4)  # past the linger: the thread is blocked on its queue again
    assert writer._thread is not None and writer._thread.is_alive()
    assert writer.submit(201) and writer.flush(10.0) and ran[-1] == 201
    assert writer.close(5.0)


def test_the_writer_rejects_a_coalescing_delay_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="coalesce"):
        ReceiptWriter(lambda job: None, report=lambda where, exc: None, coalesce=0)


def test_the_writer_never_calls_time_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """An application or test that patches or counts ``time.sleep`` sees no call the writer
    made while it lingers after a batch (the openai SDK's own suite counts them)."""
    real_sleep, calls = time.sleep, []

    def counting_sleep(seconds: float) -> None:
        calls.append((threading.current_thread().name, seconds))
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", counting_sleep)
    ran: list[int] = []
    writer: ReceiptWriter[int] = ReceiptWriter(ran.append, report=lambda where, exc: None)
    for i in range(3):
        assert writer.submit(i) and writer.flush(5.0)
    real_sleep(0.1)  # the whole linger after the last batch (62 ms)
    assert ran == [0, 1, 2]
    assert calls == []
    assert writer.close(5.0)
