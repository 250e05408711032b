"""The real-model tier: fixtures for a llama.cpp server running a model written at test time.

Run by ``make e2e`` (its own venv with the llama-cpp-python wheel), never by ``make test``.
The numbers every scenario measures are collected here and written to ``RESULTS.md`` when
the session ends.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import streamguard
from streamguard._receipts.signing import HmacSigner
from streamguard.testing.sinks import InMemoryReceiptSink

from ._llama_server import LlamaServer
from ._model import SPEC, write_model
from ._results import Results

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def results() -> Iterator[Results]:
    collected = Results(started=time.monotonic())
    yield collected
    if collected.rows or collected.ollama or collected.rate:
        (HERE / "RESULTS.md").write_text(collected.markdown())


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory, results: Results) -> Path:
    t0 = time.monotonic()
    path = write_model(tmp_path_factory.mktemp("model") / "random-llama.gguf")
    results.model = {
        "spec": SPEC,
        "bytes": path.stat().st_size,
        "write_seconds": time.monotonic() - t0,
    }
    return path


@pytest.fixture(scope="session")
def llama_server(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory, results: Results
) -> Iterator[LlamaServer]:
    # Found, not imported: the engine runs in the server process only.
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: run `make e2e`, which installs it")
    log = tmp_path_factory.mktemp("server") / "llama-server.log"
    t0 = time.monotonic()
    server = LlamaServer(model_path, log)
    results.server_start_seconds = time.monotonic() - t0
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sink() -> InMemoryReceiptSink:
    return InMemoryReceiptSink()


@pytest.fixture
def instrument(sink: InMemoryReceiptSink) -> Iterator[object]:
    """``instrument(**options)``: StreamGuard on, with an HMAC key and the test's sink."""

    def on(**options: object) -> None:
        streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="e2e"), **options)

    yield on
    streamguard.uninstrument()
