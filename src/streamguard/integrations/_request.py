"""Which streams belong to the ASGI request (or WebSocket) being served.

The middleware sets a request scope in a contextvar, registered as an owner scope
(``streamguard._engine.owners``): every stream begun under it is added (in the request's
task, its child tasks, and threadpool workers, which copy the context). The scope holds
cores, never the application's stream objects.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

from streamguard._engine import owners
from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore

__all__ = ["RequestStreams", "current_request"]

_current: contextvars.ContextVar[RequestStreams | None] = contextvars.ContextVar(
    "streamguard_request", default=None
)


class RequestStreams(owners.Scope):
    """The streams opened while serving one request."""

    __slots__ = ()

    def add(self, core: StreamCore) -> None:
        # Units count as consumed when their bytes are sent, not when the app asks for more.
        core.consume_on_next = False
        super().add(core)

    def late_detail(self) -> str:
        return "the client had already gone"

    def sent(self) -> None:
        """Bytes went out: every unit handed over so far reached the client."""
        with self._lock:
            cores = list(self._cores)
        for core in cores:
            if core._pending:
                core.consume(len(core._pending))

    def client_gone(self, detail: str) -> None:
        self.stop(StopReason.CLIENT_DISCONNECT, detail)

    def finished(self) -> None:
        """The response is complete: nothing more will be sent for these streams."""
        with self._lock:
            self._cores.clear()

    def set(self) -> contextvars.Token[RequestStreams | None]:
        return _current.set(self)


def current_request() -> RequestStreams | None:
    return _current.get()


def reset(token: contextvars.Token[RequestStreams | None]) -> None:
    _current.reset(token)


owners.register(current_request)
