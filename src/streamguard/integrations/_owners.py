"""Streams opened on behalf of one unit of work that a framework runs in the background.

A framework that drains a model stream from a task of its own (the OpenAI Agents SDK's
streamed run) hides the application's consumption from the stream's guard: the background
task keeps reading whatever the application does. The integration sets a ``RunStreams`` in
a contextvar while the framework creates that task (which copies the context), so every
stream the run opens is added here (an owner scope: ``streamguard._engine.owners``), and
the integration stops them all when the application stops consuming. The scope holds cores,
never application objects.
"""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING

from streamguard._engine import owners
from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore

__all__ = ["RunStreams", "current_run"]

_current: contextvars.ContextVar[RunStreams | None] = contextvars.ContextVar(
    "streamguard_run", default=None
)


class RunStreams:
    """The streams of one background run; ``stop`` ends those open and any opened later."""

    __slots__ = ("_cores", "_lock", "detail", "reason")

    def __init__(self) -> None:
        self._cores: list[StreamCore] = []
        self._lock = threading.Lock()
        self.reason: StopReason | None = None
        self.detail = ""

    def add(self, core: StreamCore) -> None:
        with self._lock:
            self._cores = [c for c in self._cores if c.stop_reason is None]
            self._cores.append(core)
            reason = self.reason
        if reason is not None:  # opened after the consumer left: stop it at once
            core.request_stop(reason, self.detail)

    def stop(self, reason: StopReason, detail: str) -> None:
        """Stop every stream of the run (first call wins; later calls change nothing)."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason, self.detail = reason, detail
            cores, self._cores = self._cores, []
        for core in cores:
            core.request_stop(reason, detail)

    def set(self) -> contextvars.Token[RunStreams | None]:
        return _current.set(self)

    @staticmethod
    def reset(token: contextvars.Token[RunStreams | None]) -> None:
        _current.reset(token)


def current_run() -> RunStreams | None:
    return _current.get()


owners.register(current_run)
