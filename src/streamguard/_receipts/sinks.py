"""Where sealed receipts go: the ``ReceiptSink`` protocol.

Implementations: ``JsonlLedgerSink`` (local append-only file), the OTel span-event and log
sinks (``streamguard._telemetry``), and ``streamguard.testing.sinks.InMemoryReceiptSink``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from streamguard._receipts.model import Receipt

__all__ = ["ReceiptSink"]


@runtime_checkable
class ReceiptSink(Protocol):
    """Receives each sealed receipt once. ``emit`` may raise; the engine logs the failure."""

    def emit(self, receipt: Receipt) -> None: ...
