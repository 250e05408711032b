"""A stream whose values a receipt cannot hold still gets exactly one receipt (DESIGN G4).

An empty model or provider name, an impossible ``max_tokens``, an attribute of the wrong type
or out of range: the first seal fails on it. The receipt is then sealed degraded: the value is
left out (``None``, ``"unknown"``, the attribute dropped), the detail names what was left out,
everything else (counters, reason, the other attributes) is as StreamGuard saw it, and the
chain goes on unbroken. Before, such a stream got no receipt at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import streamguard
from streamguard.testing import InMemoryReceiptSink

CASES: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    ({"model": ""}, "model", {"model": None}),
    ({"provider": ""}, "provider", {"provider": "unknown"}),
    ({"operation": ""}, "operation", {"operation": "unknown"}),
    ({"max_tokens": -1}, "request_max_tokens", {"request_max_tokens": None}),
    ({"max_tokens": 2**60}, "request_max_tokens", {"request_max_tokens": None}),
    ({"attributes": {"ratio": 1.5, "team": "a"}}, "attributes['ratio']", {}),
    ({"attributes": {"": "v", "team": "a"}}, "attributes['']", {}),
    ({"attributes": {"big": 2**60, "team": "a"}}, "attributes['big']", {}),
]


@pytest.mark.parametrize(("kwargs", "left_out", "expected"), CASES)
def test_a_value_a_receipt_cannot_hold_gives_a_degraded_receipt_not_none(
    kwargs: dict[str, Any],
    left_out: str,
    expected: dict[str, Any],
    sink: InMemoryReceiptSink,
    instrument_with: Callable[..., None],
) -> None:
    instrument_with()
    before = streamguard.GuardedIterator(iter(["a"]), model="m")
    list(before)
    guarded = streamguard.GuardedIterator(iter(["a", "b", "c"]), **{"model": "m", **kwargs})
    assert list(guarded) == ["a", "b", "c"]  # the stream itself is unaffected
    after = streamguard.GuardedIterator(iter(["a"]), model="m")
    list(after)

    receipts = sink.wait_for(3)
    assert [r.stream_id for r in receipts] == [
        before.stream_id,
        guarded.stream_id,
        after.stream_id,
    ]
    first, receipt, last = receipts
    assert (first.seq + 1, receipt.seq + 1) == (receipt.seq, last.seq)  # one chain, unbroken
    assert (receipt.prev_hash, last.prev_hash) == (first.hash, receipt.hash)
    assert (receipt.outcome, receipt.reason, receipt.tokens.produced) == (
        "completed",
        "completed",
        3,
    )
    assert receipt.detail is not None and receipt.detail.startswith("receipt degraded: ")
    assert left_out in receipt.detail
    for name, value in expected.items():
        assert getattr(receipt, name) == value, name
    if "attributes" in kwargs:
        assert receipt.attributes["team"] == "a"  # the valid ones are kept
        assert all(key not in receipt.attributes for key in ("ratio", "", "big"))
    assert guarded.receipt == receipt


def test_a_receipt_with_valid_values_is_not_degraded(
    sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    instrument_with()
    guarded = streamguard.GuardedIterator(
        iter(["a"]), model="m", max_tokens=5, attributes={"team": "a", "n": 3, "ok": True}
    )
    list(guarded)
    (receipt,) = sink.wait_for(1)
    assert (receipt.detail, receipt.model, receipt.request_max_tokens) == (None, "m", 5)
    assert {key: receipt.attributes.get(key) for key in ("team", "n", "ok")} == {
        "team": "a",
        "n": 3,
        "ok": True,
    }
