"""Counters StreamGuard adds up itself and reports through observable instruments.

A finished stream adds to four counters (``streamguard.streams``, ``.receipts``, ``.tokens``
by kind, ``.cost`` by kind: up to eleven additions) and its start and end move
``streamguard.streams.active``. Through the OTel SDK every ``add`` is a measurement (attribute
hashing, a storage lookup, a lock, an aggregation), the largest share of a stream's metric
cost. Adding into a dict here and reporting the totals when a reader collects gives the same
data points: cumulative monotonic sums (and an up-down sum for the active streams), with the
same names, units, descriptions and attributes; exporters and the delta temporality see no
difference. Histograms stay synchronous (OTel has no observable histogram).

Process-wide, as the SDK's storage of a synchronous counter is: every ``Telemetry`` (one per
runtime) adds into the same totals, and the observable instruments are created once per process
(the SDK keeps the first instrument of a name, with its callbacks). A forked child keeps the
parent's totals, as it keeps a synchronous counter's storage, and gets a fresh lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from streamguard._telemetry import names as n

__all__ = ["Counted", "Totals", "counted", "totals"]

Counted = tuple[Mapping[str, Any], Hashable]
"""An attribute set and its key (built once: ``counted``)."""


def counted(attributes: Mapping[str, Any]) -> Counted:
    """``attributes`` with the key its totals are kept under (build it once, reuse it)."""
    return attributes, frozenset(attributes.items())


class Totals:
    """Running sums per instrument name and attribute set; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[str, dict[Hashable, list[Any]]] = {}
        self._registered = False

    def add(self, name: str, value: float, attributes: Counted) -> None:
        attrs, key = attributes
        with self._lock:
            sums = self._sums.get(name)
            if sums is None:
                sums = self._sums[name] = {}
            entry = sums.get(key)
            if entry is None:
                sums[key] = [value, attrs]
            else:
                entry[0] += value

    def observe(self, name: str) -> list[Observation]:
        with self._lock:
            entries = list(self._sums.get(name, {}).values())
        return [Observation(value, dict(attrs)) for value, attrs in entries]

    def register(self, meter: Meter) -> None:
        """Create the observable instruments on ``meter``, the first time only: later meters
        of the same scope would get the SDK's instruments of the first (with its callbacks)."""
        with self._lock:
            if self._registered:
                return
            self._registered = True
        for spec in (n.STREAMS, n.TOKENS, n.COST, n.RECEIPTS):
            meter.create_observable_counter(
                spec[0], callbacks=[self._callback(spec[0])], unit=spec[1], description=spec[2]
            )
        name, unit, description = n.STREAMS_ACTIVE
        meter.create_observable_up_down_counter(
            name, callbacks=[self._callback(name)], unit=unit, description=description
        )

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return self.observe(name)

        return observe

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


totals = Totals()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=totals._after_fork_in_child)
