"""instrument()/uninstrument(), the OTel instrumentor entry point, and guard()."""

from __future__ import annotations

import gc
import importlib.metadata
import os
import subprocess
import sys
import textwrap

import ollama
import openai
import openai._base_client
import pytest
from ollama._client import AsyncClient, Client

import streamguard
from streamguard.providers import all_patchers
from streamguard.providers._base import Patcher
from streamguard.testing import Upstream

# openai is guarded where every request and every stream passes (providers/_stainless.py),
# ollama where every request passes (Client._request).
PATCHED = [
    (Client, "_request"),
    (AsyncClient, "_request"),
    (openai._base_client.SyncAPIClient, "request"),
    (openai._base_client.AsyncAPIClient, "request"),
    (openai.Stream, "__init__"),
    (openai.Stream, "__next__"),
    (openai.Stream, "close"),
    (openai.AsyncStream, "__anext__"),
    (openai.AsyncStream, "close"),
]


def test_public_api_is_pinned() -> None:
    assert sorted(streamguard.__all__) == sorted(
        [
            "Budget",
            "BudgetExceeded",
            "Category",
            "ConfigurationError",
            "GuardedAsyncIterator",
            "GuardedIterator",
            "InMemoryBudgetStore",
            "MissingExtraError",
            "Options",
            "Outcome",
            "Price",
            "Receipt",
            "ReceiptVerificationError",
            "StopReason",
            "StreamBlocked",
            "StreamCancelled",
            "StreamGuardError",
            "StreamHandle",
            "StreamPolicy",
            "StreamSession",
            "__version__",
            "active_streams",
            "cancel_stream",
            "configure_otel",
            "context",
            "flush",
            "guard",
            "handle_of",
            "instrument",
            "is_instrumented",
            "limits",
            "uninstrument",
            "Verdict",
        ]
    )
    for name in streamguard.__all__:
        assert hasattr(streamguard, name), name


def test_uninstrument_restores_the_originals_exactly(otel, monkeypatch) -> None:
    """In-process, after whatever ran before: stream-class patches stay (by design) only while
    a stream guarded in place is alive, and no stopped stream stays alive."""
    # The suite's in-memory exporters keep the last test's records (exception logs hold their
    # frames); garbage not yet collected was frozen by the conftest (gc.freeze).
    otel.clear()
    gc.unfreeze()
    gc.collect()
    monkeypatch.setenv("STREAMGUARD_SIGNING_KEY", "ab" * 32)
    before = {(cls, name): cls.__dict__[name] for cls, name in PATCHED}
    chat_before = ollama.chat
    streamguard.instrument()
    try:
        assert all(cls.__dict__[name] is not before[(cls, name)] for cls, name in PATCHED)
        assert ollama.chat is chat_before  # a bound method of the default client: guarded inside
        with pytest.warns(RuntimeWarning, match="already called"):
            streamguard.instrument()
    finally:
        streamguard.uninstrument()
    assert all(cls.__dict__[name] is before[(cls, name)] for cls, name in PATCHED)
    assert "__del__" not in vars(openai.Stream)
    assert "_streamguard" not in vars(openai.AsyncStream)
    assert ollama.chat is chat_before
    assert not streamguard.is_instrumented()


_LAZY = """
import sys
import streamguard

sdks = ("openai", "anthropic", "ollama", "google.genai", "mistralai")
streamguard.instrument()
assert not [m for m in sdks if m in sys.modules], [m for m in sdks if m in sys.modules]
import openai  # the application imports its SDK after instrument(): patched then

assert "__wrapped__" in dir(openai.Stream.__dict__["__next__"]), "openai was not patched"
assert "anthropic" not in sys.modules
streamguard.uninstrument()
assert "__wrapped__" not in dir(openai.Stream.__dict__["__next__"])
import anthropic  # imported after uninstrument(): its hook must not patch it

assert "__wrapped__" not in dir(anthropic.Stream.__dict__["__next__"])
streamguard.instrument()  # already imported: patched at once
assert "__wrapped__" in dir(anthropic.Stream.__dict__["__next__"])
assert "__wrapped__" in dir(openai.Stream.__dict__["__next__"])
streamguard.uninstrument()
print("lazy")
"""


def test_instrument_patches_an_sdk_when_the_application_imports_it() -> None:
    """In a fresh process: instrument() imports no SDK; each is patched on its import, or at
    once when it was imported before; after uninstrument() a later import stays unpatched."""
    result = subprocess.run(
        [sys.executable, "-c", _LAZY],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "STREAMGUARD_SIGNING_KEY": "ab" * 32},
    )
    assert result.stdout.strip() == "lazy", result.stdout + result.stderr


def test_bad_option_fails_at_instrument_and_patches_nothing() -> None:
    original = openai.Stream.__dict__["__next__"]
    with pytest.raises(streamguard.ConfigurationError, match="STREAMGUARD_STALL_TIMEOUT"):
        os.environ["STREAMGUARD_STALL_TIMEOUT"] = "-5"
        try:
            streamguard.instrument()
        finally:
            del os.environ["STREAMGUARD_STALL_TIMEOUT"]
    assert not streamguard.is_instrumented()
    assert openai.Stream.__dict__["__next__"] is original


def test_unsupported_version_is_refused_with_a_clear_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FutureSDK(Patcher):
        name = distribution = "openai"
        supported = ("0.1", "0.2")

        def targets(self):
            raise AssertionError("must not patch an unsupported version")

    assert FutureSDK().patch() is False
    assert "supported versions are >=0.1,<0.2" in caplog.text
    assert "NOT guarded" in caplog.text


def test_missing_sdk_is_skipped() -> None:
    class Missing(Patcher):
        name = distribution = "no-such-sdk-streamguard"

    assert Missing().patch() is False


def test_every_supported_sdk_has_a_patcher() -> None:
    assert {p.name for p in all_patchers()} >= {"openai", "anthropic", "ollama"}


def test_entry_point_is_registered() -> None:
    eps = importlib.metadata.entry_points(group="opentelemetry_instrumentor")
    (ep,) = [e for e in eps if e.name == "streamguard"]
    assert ep.load().__name__ == "StreamGuardInstrumentor"


def test_opentelemetry_instrument_guards_streams_without_code_change(tmp_path) -> None:
    ledger = tmp_path / "receipts.jsonl"
    app = tmp_path / "app.py"
    with Upstream(token_interval=0.005) as up:
        app.write_text(
            textwrap.dedent(
                f"""
                import openai
                client = openai.OpenAI(base_url={up.openai_base_url!r}, api_key="k", max_retries=0)
                stream = client.chat.completions.create(
                    model="gpt-4o", messages=[{{"role": "user", "content": "hi"}}],
                    max_tokens=100, stream=True)
                for i, _ in enumerate(stream):
                    if i == 3:
                        break
                import streamguard
                print(type(stream).__name__, streamguard.handle_of(stream) is not None)
                """
            )
        )
        env = {
            **os.environ,
            "STREAMGUARD_LEDGER_PATH": str(ledger),
            "STREAMGUARD_SIGNING_KEY": "00" * 32,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }
        bindir = os.path.dirname(sys.executable)
        result = subprocess.run(
            [os.path.join(bindir, "opentelemetry-instrument"), sys.executable, str(app)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "Stream True"  # the SDK's own object, guarded in place
    # The script kept its stream in a global until the interpreter exited: exactly one
    # receipt, sealed at shutdown (DESIGN G4).
    lines = ledger.read_text().splitlines()
    assert len(lines) == 1
    assert '"reason":"shutdown"' in lines[0]


def test_guard_one_stream_without_instrument(runtime, sink) -> None:
    assert not streamguard.is_instrumented()
    with Upstream(token_interval=0.005) as up:
        client = openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
        raw = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True
        )
        stream = streamguard.guard(raw, model="gpt-4o", max_tokens=50)
        assert streamguard.guard(stream) is stream
        assert isinstance(stream, openai.Stream)
        for i, _ in enumerate(stream):
            if i == 4:
                break
        handle = streamguard.handle_of(stream)
        assert handle is not None
        stream.close()
        receipt = handle.wait_receipt(2)
        assert receipt is not None
        assert (receipt.reason, receipt.provider, receipt.model) == (
            "consumer_closed",
            "openai",
            "gpt-4o",
        )
        (record,) = up.wait_for_requests(1)
        assert record.wait_done(2)
        assert record.disconnected_ns is not None


def test_uninstrument_leaves_no_thread_task_or_socket_behind(tmp_path) -> None:
    import threading

    with Upstream(token_interval=0.005) as up:
        streamguard.instrument(stall_timeout=5)
        client = openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=500,
            stream=True,
        )
        next(stream)
        session = streamguard.StreamSession(producer=_Idle(), N=2, M=1)
        session.start()  # outside a loop: runs on the background loop thread
        assert {t.name for t in threading.enumerate()} >= {
            "streamguard-watchdog",
            "streamguard-loop",
        }
        streamguard.uninstrument()
        product = ("streamguard-watchdog", "streamguard-loop", "streamguard-remote-cancel")
        assert not [t for t in threading.enumerate() if t.name in product]
        (record,) = up.wait_for_requests(1)
        assert record.wait_done(2)
        assert record.disconnected_ns is not None  # the socket was closed
        assert streamguard.handle_of(stream).receipt.reason == "shutdown"  # type: ignore[union-attr]
        assert session.receipt is not None and session.receipt.reason == "shutdown"
        client.close()


class _Idle:
    async def run(self, *, out_q, cancel_event, stats) -> None:
        await cancel_event.wait()
