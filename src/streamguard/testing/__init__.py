"""Public test helpers: a local LLM upstream that speaks each provider's wire format, and
in-memory receipt sinks.

The sinks need nothing beyond StreamGuard; the upstream needs the ``testing`` extra (uvicorn),
and importing it without that extra fails with one line naming the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamguard.testing.sinks import InMemoryReceiptSink

if TYPE_CHECKING:
    from streamguard.testing.upstream import (
        Fault,
        FaultKind,
        RequestRecord,
        Upstream,
        expected_text,
        image_text,
        token_text,
    )

__all__ = [
    "Fault",
    "FaultKind",
    "InMemoryReceiptSink",
    "RequestRecord",
    "Upstream",
    "expected_text",
    "image_text",
    "token_text",
]

_UPSTREAM_NAMES = frozenset(__all__) - {"InMemoryReceiptSink"}


def __getattr__(name: str) -> Any:
    # The upstream is imported on first use so that the sinks work without uvicorn.
    if name in _UPSTREAM_NAMES:
        from streamguard._extras import require

        require("uvicorn", feature="streamguard.testing's upstream", extra="testing")
        from streamguard.testing import upstream

        return getattr(upstream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
