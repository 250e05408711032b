"""``streamguard demo``: the bleed, measured without and with StreamGuard.

For openai, anthropic and ollama, an async consumer reading a stream is cancelled while it
works on a chunk (a request timeout, a client that went away): today every SDK leaves the
upstream generating. The embedded upstream generates on its own clock and counts what it
generated after the stop. No network, no keys: runs in well under 30 s.

With ``--upstream URL`` the same scenario runs against a real Ollama server (the server's own
generation is not observable from here, so the table shows the time to close and the receipt).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from streamguard._extras import require
from streamguard.exceptions import MissingExtraError

_WINDOW_S = 1.0
_TOKEN_INTERVAL = 0.02
_PROMPT = [{"role": "user", "content": "Explain backpressure in async systems."}]


@dataclass
class _Row:
    provider: str
    guarded: bool
    after_stop: int | None
    close_ms: float | None


def _open(provider: str, base: str, model: str | None) -> Any:
    """An async stream coroutine for ``provider`` against the upstream at ``base``."""
    if provider == "openai":
        import openai

        client: Any = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="demo", max_retries=0)
        return client.chat.completions.create(
            model=model or "gpt-4o-mini", messages=_PROMPT, max_tokens=400, stream=True
        )
    if provider == "anthropic":
        import anthropic

        client = anthropic.AsyncAnthropic(base_url=base, api_key="demo", max_retries=0)
        return client.messages.create(
            model=model or "claude-sonnet-4-0", messages=_PROMPT, max_tokens=400, stream=True
        )
    import ollama

    client = ollama.AsyncClient(host=base)
    return client.chat(
        model=model or "llama3.2", messages=_PROMPT, stream=True, options={"num_predict": 400}
    )


async def _scenario(provider: str, base: str, model: str | None) -> tuple[int, Any]:
    """Read 10 chunks, then the consuming task is cancelled inside its per-chunk work."""
    read = asyncio.Event()
    holder: dict[str, Any] = {}

    async def consume() -> None:
        stream = await _open(provider, base, model)
        holder["stream"] = stream  # the application keeps it, as a relay or a cache would
        count = 0
        async for _ in stream:
            count += 1
            if count == 10:
                read.set()
            await asyncio.sleep(0.001)  # per-chunk work: where the cancellation lands

    if not _guarded_now():
        # Without a guard the SDKs' own generators fail to close at loop shutdown; that noise
        # is part of the problem, not of the demo's output.
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
    task = asyncio.create_task(consume())
    await read.wait()
    stopped = time.monotonic_ns()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(_WINDOW_S)
    return stopped, holder.get("stream")


def _guarded_now() -> bool:
    import streamguard

    return streamguard.is_instrumented()


_PROVIDERS = ("openai", "anthropic", "ollama")  # each SDK's name is its module's


def _installed_providers() -> list[str]:
    """The demo's SDKs that are installed; at least one, or a one-line hint."""
    import importlib.util

    found = [name for name in _PROVIDERS if importlib.util.find_spec(name)]
    if not found:
        raise MissingExtraError("streamguard demo (openai, anthropic or ollama)", "demo")
    return found


def _run_local(console: Console) -> tuple[list[_Row], Any]:
    require("uvicorn", feature="streamguard demo (the embedded upstream)", extra="demo")
    providers = _installed_providers()
    import streamguard
    from streamguard.testing import Upstream
    from streamguard.testing.sinks import InMemoryReceiptSink

    rows: list[_Row] = []
    sink = InMemoryReceiptSink()
    with Upstream(token_interval=_TOKEN_INTERVAL) as up:
        for guarded in (False, True):
            if guarded:
                streamguard.instrument(sinks=[sink], ledger_path=_ledger_path())
            try:
                for provider in providers:
                    before = len(up.requests)
                    stopped, stream = asyncio.run(_scenario(provider, up.url, None))
                    record = up.requests[before]
                    closed = record.disconnected_ns
                    rows.append(
                        _Row(
                            provider,
                            guarded,
                            record.tokens_after(stopped),
                            None if closed is None else (closed - stopped) / 1e6,
                        )
                    )
                    del stream
            finally:
                if guarded:
                    streamguard.uninstrument()
    return rows, sink


_LEDGER: list[Path] = []


def _ledger_path() -> str:
    if not _LEDGER:
        _LEDGER.append(Path(tempfile.mkdtemp(prefix="streamguard-demo-")) / "receipts.jsonl")
    return str(_LEDGER[0])


def run_demo(*, upstream: str | None = None, model: str | None = None) -> int:
    """Print the bleed table, one receipt and its verification; 0 if it verified."""
    import os

    from streamguard._receipts.signing import generate_ed25519_keypair, load_verifier
    from streamguard._receipts.verify import verify_files

    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="streamguard-demo-"))
    private, public = workdir / "demo-signing.pem", workdir / "demo-verify.pem"
    generate_ed25519_keypair(private, public)
    os.environ["STREAMGUARD_SIGNING_KEY_FILE"] = str(private)
    os.environ.setdefault("STREAMGUARD_KEY_ID", "demo")
    console.rule("[bold]StreamGuard demo: a consumer task is cancelled mid-stream")
    if upstream is None:
        rows, sink = _run_local(console)
    else:
        rows, sink = _run_remote(upstream, model)
    table = Table(title=f"Tokens the upstream generated in the {_WINDOW_S:g} s after the stop")
    for column in ("provider", "StreamGuard", "tokens after stop", "time to close"):
        table.add_column(column, justify="right" if column != "provider" else "left")
    for row in rows:
        table.add_row(
            row.provider,
            "[green]on[/]" if row.guarded else "[red]off[/]",
            "n/a" if row.after_stop is None else str(row.after_stop),
            "never" if row.close_ms is None else f"{row.close_ms:.1f} ms",
        )
    console.print(table)
    if not sink.receipts:
        console.print("[red]no receipt was emitted[/]")
        return 1
    receipt = sink.receipts[-1]
    console.print("One receipt (the last stream):")
    console.print_json(json.dumps(receipt.to_dict()))
    ledger = _ledger_path()
    report = verify_files([ledger], load_verifier(verify_key_file=str(public), environ={}))
    if report.passed:
        console.print(
            f"[green]verified[/]: {report.receipts} receipt(s) in {report.ledgers} ledger(s), "
            f"signatures, hashes and chain intact ({ledger})"
        )
        console.print(f"Check it yourself: streamguard verify {ledger} --key {public}")
        return 0
    console.print(f"[red]verification failed[/]: {report.first_error}")
    return 1


def _run_remote(url: str, model: str | None) -> tuple[list[_Row], Any]:
    import streamguard
    from streamguard.testing.sinks import InMemoryReceiptSink

    require("ollama", feature="streamguard demo --upstream (a real Ollama)", extra="ollama")
    sink = InMemoryReceiptSink()
    streamguard.instrument(sinks=[sink], ledger_path=_ledger_path())
    try:
        stopped, _stream = asyncio.run(_scenario("ollama", url.rstrip("/"), model))
        receipt = sink.wait_for(1, 5.0)[0]
        closed = receipt.times.upstream_closed
        rows = [_Row("ollama", True, None, None)]
        if closed is not None and receipt.times.stop_requested is not None:
            rows[0].close_ms = (closed - receipt.times.stop_requested) / 1e6
    finally:
        streamguard.uninstrument()
    del stopped
    return rows, sink
