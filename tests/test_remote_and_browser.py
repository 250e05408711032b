"""The example app in a real process: a cancel from another process through a real Redis, and
the example page's Stop button in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import streamguard
from conftest import _free_port
from streamguard._receipts.signing import HmacSigner
from streamguard.testing import Upstream

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.02) as up:
        yield up


@pytest.fixture(scope="module")
def example_app(upstream, redis_url, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """examples/fastapi_sse.py served by uvicorn in its own process, with Redis and a ledger."""
    ledger = tmp_path_factory.mktemp("ledger") / "receipts.jsonl"
    port = _free_port()
    env = {
        **os.environ,
        "OPENAI_BASE_URL": upstream.openai_base_url,
        "STREAMGUARD_REDIS_URL": redis_url,
        "STREAMGUARD_LEDGER_PATH": str(ledger),
        "STREAMGUARD_SIGNING_KEY": "11" * 32,
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_sse:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # start-up imports every SDK: slow on a loaded machine
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"the example app did not start: {proc.communicate()[0]}")
    yield url, ledger
    proc.terminate()
    proc.communicate(timeout=10)


def _ledger_receipts(ledger: Path, n: int, timeout: float = 5.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = ledger.read_text().splitlines() if ledger.exists() else []
        if len(lines) >= n:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"expected {n} receipts in the ledger")


def test_cancel_from_another_process_through_redis(upstream, redis_url, example_app) -> None:
    url, ledger = example_app
    before = len(ledger.read_text().splitlines()) if ledger.exists() else 0
    requests_before = len(upstream.requests)
    streamguard.instrument(signer=HmacSigner(bytes(32), key_id="t"), redis_url=redis_url)
    try:
        with (
            httpx.Client(timeout=10) as http,
            http.stream(
                "POST", f"{url}/chat", json={"question": "stream a while", "max_tokens": 500}
            ) as response,
        ):
            stream_id = response.headers["x-streamguard-stream-id"]
            lines = response.iter_lines()
            events = 0
            for line in lines:
                if line.startswith("data:"):
                    events += 1
                if events == 5:
                    break
            assert streamguard.active_streams() == []  # not ours: it runs in the other process
            t_stop = time.monotonic_ns()
            assert streamguard.cancel_stream(stream_id) is True
            error = None
            for line in lines:
                if line == "event: error":
                    error = json.loads(next(lines)[len("data: ") :])
                    break
    finally:
        streamguard.uninstrument()
    assert error is not None
    assert error["error"]["type"] == "manual"
    record = upstream.requests[requests_before]
    assert record.wait_done(3)
    assert (record.disconnected_ns - t_stop) / 1e6 <= 100
    receipt = _ledger_receipts(ledger, before + 1)[before]
    assert (receipt["stream_id"], receipt["reason"], receipt["category"]) == (
        stream_id,
        "manual",
        "operator",
    )


def test_stop_button_in_headless_chromium(upstream, example_app, tmp_path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make system-deps` installs it")
        pytest.skip("Debian chromium is not installed (make system-deps)")
    from playwright.sync_api import sync_playwright

    url, ledger = example_app
    before = len(ledger.read_text().splitlines()) if ledger.exists() else 0
    requests_before = len(upstream.requests)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 900, "height": 600})
        page.goto(url + "/")
        page.click("#ask")
        page.wait_for_function(
            "document.getElementById('answer').textContent.split(' ').length > 15"
        )
        t_stop = time.monotonic_ns()
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        shown = page.text_content("#answer") or ""
        # The page shows what was streamed until Stop (examples/static/stop-button.png is one).
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert shown.startswith(" w0 w1 w2")
    record = upstream.requests[requests_before]
    assert record.wait_done(3)
    # A browser round trip sits between the click and the disconnect: a generous bound (the
    # 100 ms bound is proven with a plain HTTP client in test_asgi.py).
    assert (record.disconnected_ns - t_stop) / 1e6 <= 1000
    assert record.completed is False
    assert record.tokens_after(t_stop) <= 50
    receipt = _ledger_receipts(ledger, before + 1)[before]
    assert receipt["reason"] in {"manual", "client_disconnect"}
