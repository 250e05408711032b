"""DESIGN G7: a fault inside StreamGuard is logged once and the stream goes on; policy
decisions and the application's own errors still propagate."""

from __future__ import annotations

import logging

import pytest

from streamguard import GuardedIterator
from streamguard import _runtime as rt


class BrokenSink:
    def emit(self, receipt: object) -> None:
        raise OSError("disk full")


def _meter(chunk: str) -> int:
    if chunk == "weird":
        raise AttributeError("a chunk shape this meter does not know")
    return 1


def test_a_failing_meter_and_sink_do_not_break_the_stream(runtime, sink, caplog) -> None:
    runtime.sinks.insert(0, BrokenSink())
    caplog.set_level(logging.WARNING, logger="streamguard")
    chunks = ["a", "weird", "b", "weird", "c"]
    got = list(GuardedIterator(iter(chunks), meter=_meter, model="m"))
    assert got == chunks  # every chunk reached the application
    receipt = sink.wait_for(1, 2)[0]  # the healthy sink still got the receipt
    assert (receipt.outcome, receipt.tokens.produced) == ("completed", 5)
    places = [where for where, _ in rt.faults]
    assert places.count("meter") == 2
    assert "sink.BrokenSink" in places
    warnings = [r for r in caplog.records if "internal fault in meter" in r.getMessage()]
    assert len(warnings) == 1  # logged once
    del rt.faults[:]  # expected here; the autouse check would fail the test otherwise


def test_application_errors_still_propagate(runtime, sink) -> None:
    with pytest.raises(ZeroDivisionError):
        for _ in GuardedIterator(iter(["a", "b"]), model="m"):
            1 / 0  # noqa: B018 - the application's own bug
    assert sink.wait_for(1, 2)[0].reason == "consumer_closed"
