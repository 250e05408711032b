"""``streamguard demo``: a consumer leaves mid-stream; the guard stops the producer.

Runs with no network and no keys: an embedded producer emits tokens on its own clock, the
consumer leaves after a few, and the demo prints what the producer generated after the stop,
the receipt, and the verification of that receipt.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


class _ClockedProducer:
    """Generates a token every ``interval`` seconds, like a model server, until cancelled."""

    def __init__(self, tokens: int, interval: float) -> None:
        self.tokens, self.interval = tokens, interval
        self.generated_at: list[float] = []

    async def run(self, *, out_q: asyncio.Queue[str], cancel_event: asyncio.Event, stats: dict[str, Any]) -> None:
        for i in range(self.tokens):
            if cancel_event.is_set():
                return
            await asyncio.sleep(self.interval)
            self.generated_at.append(time.monotonic())
            await out_q.put(f" token{i}")


async def _unguarded(tokens: int, leave_after: int, interval: float) -> int:
    """The same producer behind a plain queue: nobody tells it the consumer left."""
    producer = _ClockedProducer(tokens, interval)
    queue: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(
        producer.run(out_q=queue, cancel_event=asyncio.Event(), stats={})
    )
    for _ in range(leave_after):
        await queue.get()
    left = time.monotonic()
    await asyncio.sleep(0.5)
    task.cancel()
    return sum(1 for t in producer.generated_at if t > left)


def run_demo(*, tokens: int = 200, leave_after: int = 10, interval: float = 0.01) -> int:
    from streamguard._receipts.signing import Ed25519Signer
    from streamguard._receipts.verify import verify_files, load_verifier
    from streamguard._runtime import Runtime, set_runtime
    from streamguard.testing.sinks import InMemoryReceiptSink

    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="streamguard-demo-"))
    signer = Ed25519Signer.generate(key_id="demo")
    memory = InMemoryReceiptSink()
    ledger = workdir / "receipts.jsonl"
    from streamguard._config import Options

    runtime = Runtime(
        Options.resolve({"ledger_path": str(ledger)}, environ={}), signer=signer, sinks=[memory]
    )
    previous = set_runtime(runtime)
    try:
        console.rule("[bold]StreamGuard demo: the consumer leaves after %d tokens" % leave_after)
        bleed = asyncio.run(_unguarded(tokens, leave_after, interval))
        after, receipt = asyncio.run(_guarded_with_receipt(tokens, leave_after, interval, memory))
    finally:
        runtime.shutdown()
        set_runtime(previous)
    table = Table(title="Tokens generated after the consumer left (0.5 s window)")
    table.add_column("")
    table.add_column("tokens after stop", justify="right")
    table.add_row("without StreamGuard", str(bleed))
    table.add_row("with StreamGuard", str(after))
    console.print(table)
    console.print_json(json.dumps(receipt.to_dict()))
    public = workdir / "demo-public.pem"
    public.write_bytes(signer.public_key_pem())
    report = verify_files([str(ledger)], load_verifier(verify_key_file=str(public), environ={}))
    if report.ok:
        console.print(f"[green]verified[/]: {report.summary()} ({ledger})")
        console.print(f"Check it yourself: streamguard verify {ledger} --key {public}")
        return 0
    console.print(f"[red]verification failed[/]: {report.first_error}")
    return 1


async def _guarded_with_receipt(tokens: int, leave_after: int, interval: float, memory: Any) -> tuple[int, Any]:
    from streamguard import StreamSession

    producer = _ClockedProducer(tokens, interval)
    session = StreamSession(producer=producer, N=5, M=2, stats={}, model="demo-model", max_tokens=tokens)
    session.start()
    got = 0
    async for _ in session:
        got += 1
        if got == leave_after:
            break
    left = time.monotonic()
    del session  # the consumer is gone: dropping the session is the only signal it gives
    for _ in range(100):
        if memory.receipts:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    after = sum(1 for t in producer.generated_at if t > left)
    return after, memory.receipts[0]
