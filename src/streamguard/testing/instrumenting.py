"""StreamGuard switched on for one test, and the check every such test ends with.

>>> from streamguard.testing import InMemoryReceiptSink
>>> from streamguard.testing.instrumenting import instrument_for_test, uninstrument_and_check
>>> sink = InMemoryReceiptSink()
>>> instrument_for_test(sink, stall_timeout=0.5)
>>> uninstrument_and_check(sink)  # stops and flushes every stream; fails on a second receipt

The pytest fixtures built on these are in ``streamguard.testing.pytest_plugin``.
"""

from __future__ import annotations

from typing import Any

from streamguard._instrument import instrument, uninstrument
from streamguard._receipts.signing import HmacSigner
from streamguard.testing.sinks import InMemoryReceiptSink

__all__ = ["TEST_KEY_ID", "instrument_for_test", "uninstrument_and_check"]

#: The key id of the fixed HMAC key tests sign with (32 zero bytes: never a production key).
TEST_KEY_ID = "test"


def instrument_for_test(sink: InMemoryReceiptSink, **options: Any) -> None:
    """``streamguard.instrument(**options)`` with receipts going to ``sink``, signed with a
    fixed HMAC test key (no ephemeral-key warning, verifiable across processes)."""
    options.setdefault("signer", HmacSigner(bytes(32), key_id=TEST_KEY_ID))
    instrument(sinks=[sink], **options)


def uninstrument_and_check(sink: InMemoryReceiptSink) -> None:
    """``streamguard.uninstrument()`` (which stops and flushes every stream), then raise
    AssertionError if any stream got more than one receipt (DESIGN G4), late ones included."""
    uninstrument()
    twice = sink.streams_with_more_than_one()
    assert not twice, f"streams with more than one receipt: {twice}"
