"""Receipt helpers for tests: an in-memory sink, and valid fields to seal sample receipts.

>>> sink = InMemoryReceiptSink()
>>> sink.receipts
[]
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from typing import Any

from streamguard._receipts.model import Receipt

__all__ = ["InMemoryReceiptSink", "receipt_fields"]


class InMemoryReceiptSink:
    """A thread-safe ``ReceiptSink`` that keeps every emitted receipt in order.

    ``receipts`` returns a snapshot (a new list), so tests can assert on it while streams are
    still finishing in other threads. Receipts are sealed off the stopping thread, so reading
    (``receipts``, ``by_stream``, ``len``, ...) first waits until every stream that already
    ended has its receipt emitted (``streamguard.flush()``): a test reads what a stream that
    returned from ``close()`` left behind, without a wait of its own.
    """

    def __init__(self) -> None:
        self._receipts: list[Receipt] = []
        self._changed = threading.Condition()

    def emit(self, receipt: Receipt) -> None:
        with self._changed:
            self._receipts.append(receipt)
            self._changed.notify_all()

    @property
    def receipts(self) -> list[Receipt]:
        _flush()
        with self._changed:
            return list(self._receipts)

    def clear(self) -> None:
        with self._changed:
            self._receipts.clear()

    def by_stream(self, stream_id: str) -> list[Receipt]:
        """Every receipt of ``stream_id``; exactly one is what DESIGN G4 promises."""
        _flush()
        with self._changed:
            return [r for r in self._receipts if r.stream_id == stream_id]

    def streams_with_more_than_one(self) -> dict[str, int]:
        """Stream id -> receipt count, for every stream that got more than one receipt
        (DESIGN G4 promises exactly one: the dict is empty)."""
        _flush()
        with self._changed:
            counts = collections.Counter(r.stream_id for r in self._receipts)
        return {stream: n for stream, n in counts.items() if n > 1}

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Receipt]:
        """Block until at least ``n`` receipts arrived and return them (a snapshot).

        Raises ``TimeoutError`` after ``timeout`` seconds, saying how many arrived. Do not call
        it on an event loop that must run for the receipts to arrive: use ``wait_for_async``.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._receipts) >= n, timeout):
                raise TimeoutError(self._timeout_message(n, timeout))
        _flush()  # the writer finished with those streams too (span ended, stream final)
        with self._changed:
            return list(self._receipts)

    # The timeout is a parameter (not asyncio.timeout around the call) so the failure can say
    # how many receipts did arrive.
    async def wait_for_async(self, n: int, timeout: float = 5.0) -> list[Receipt]:  # noqa: ASYNC109
        """``wait_for`` for async tests: polls without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                arrived = len(self._receipts) >= n
            if arrived:
                _flush()
                with self._changed:
                    return list(self._receipts)
            if time.monotonic() >= deadline:
                with self._changed:
                    raise TimeoutError(self._timeout_message(n, timeout))
            await _sleep(0.002)

    def _timeout_message(self, n: int, timeout: float) -> str:
        return f"expected {n} receipt(s) within {timeout}s, got {len(self._receipts)}"

    def __len__(self) -> int:
        _flush()
        with self._changed:
            return len(self._receipts)

    def __repr__(self) -> str:
        return f"InMemoryReceiptSink({len(self)} receipt(s))"


def receipt_fields(**overrides: Any) -> dict[str, Any]:
    """Valid ``Ledger.seal`` fields for a cancelled OpenAI chat stream; ``overrides`` replace keys.

    For tests of code that handles receipts (sinks, telemetry, verify)::

        receipt = Ledger(HmacSigner(b"k" * 32)).seal(receipt_fields(model="gpt-4o-mini"))
    """
    started = 1_760_000_000_000_000_000
    fields: dict[str, Any] = {
        "receipt_id": uuid.uuid4().hex,
        "stream_id": uuid.uuid4().hex,
        "provider": "openai",
        "model": "gpt-4o",
        "operation": "chat",
        "request_max_tokens": 1024,
        "outcome": "cancelled",
        "reason": "consumer_closed",
        "category": "client",
        "detail": None,
        "tokens": {
            "input": 12,
            "produced": 40,
            "committed": 39,
            "consumed": 38,
            "undelivered": 2,
            "post_cutoff": 0,
            "prevented_estimate": 300,
            "usage_source": "estimated",
        },
        "cost": {
            "currency": "USD",
            "input": "0.00003",
            "output": "0.0004",
            "undelivered": "0.00002",
            "prevented_estimate": "0.003",
            "pricing_source": "genai-prices",
        },
        "times": {
            "started": started,
            "first_chunk": started + 100_000_000,
            "stop_requested": started + 900_000_000,
            "upstream_closed": started + 901_000_000,
            "finalized": started + 902_000_000,
        },
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "attributes": {"tenant": "acme", "tier": "gold", "retry": False, "shard": 3},
    }
    fields.update(overrides)
    return fields


def _flush() -> None:
    """Wait for the receipt writers (not when called by one: a sink must not wait for itself)."""
    from streamguard import _runtime

    _runtime.flush_all(10.0)


async def _sleep(seconds: float) -> None:
    """A sleep on whichever event loop runs the caller (asyncio, uvloop or trio)."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)
