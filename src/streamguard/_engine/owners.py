"""Owner scopes: which streams belong to a unit of work that outlives no consumer.

Floor: ``_engine`` (imports only the engine). An integration (the ASGI middleware's request,
a framework's background run) keeps its current scope in a contextvar and registers how to
find it; every stream begun while a scope is current is added to it, so the integration can
stop them when its client or consumer goes away. Scopes hold cores, never the application's
stream objects. The runtime calls ``adopt`` for each new stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore

__all__ = ["Owner", "adopt", "register"]


class Owner(Protocol):
    def add(self, core: StreamCore) -> None:
        """Take ``core``: stop it when the owner's consumer goes away."""


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
