"""Public test helpers: a local LLM upstream that speaks each provider's wire format, and
in-memory receipt sinks."""

from streamguard.testing.sinks import InMemoryReceiptSink
from streamguard.testing.upstream import (
    Fault,
    FaultKind,
    RequestRecord,
    Upstream,
    expected_text,
    token_text,
)

__all__ = [
    "Fault",
    "FaultKind",
    "InMemoryReceiptSink",
    "RequestRecord",
    "Upstream",
    "expected_text",
    "token_text",
]
