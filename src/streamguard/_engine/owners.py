"""Owner scopes: which streams belong to a unit of work that outlives no consumer.

Floor: ``_engine`` (imports only the engine). An integration (the ASGI middleware's request,
a framework's background run) keeps its current scope in a contextvar and registers how to
find it; every stream begun while a scope is current is added to it, so the integration can
stop them when its client or consumer goes away. Scopes hold cores, never the application's
stream objects. The runtime calls ``adopt`` for each new stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from streamguard._reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore

__all__ = ["Owner", "Scope", "adopt", "register"]


class Owner(Protocol):
    def add(self, core: StreamCore) -> None:
        """Take ``core``: stop it when the owner's consumer goes away."""


class Scope:
    """The streams of one owner. ``stop`` ends those open and any added later; the first call
    wins and later ones change nothing."""

    __slots__ = ("_cores", "_lock", "detail", "reason")

    def __init__(self) -> None:
        self._cores: list[StreamCore] = []
        self._lock = threading.Lock()
        self.reason: StopReason | None = None
        self.detail = ""

    def add(self, core: StreamCore) -> None:
        with self._lock:
            self._cores.append(core)
            reason = self.reason
        if reason is not None:  # added after the owner's consumer left: stop it at once
            core.request_stop(reason, self.late_detail())

    def late_detail(self) -> str:
        """The stop detail of a stream added after ``stop``."""
        return self.detail

    def stop(self, reason: StopReason, detail: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason, self.detail = reason, detail
            cores, self._cores = self._cores, []
        for core in cores:
            core.request_stop(reason, detail)


_lookups: list[Callable[[], Owner | None]] = []


def register(current: Callable[[], Owner | None]) -> None:
    """Register how to find an integration's current scope (once per integration)."""
    if current not in _lookups:
        _lookups.append(current)


def adopt(core: StreamCore) -> None:
    """Add ``core`` to every owner scope current in this context."""
    for current in _lookups:
        owner = current()
        if owner is not None:
            owner.add(core)
