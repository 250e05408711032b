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
from typing import TYPE_CHECKING

from streamguard._engine import owners

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore

__all__ = ["RunStreams", "current_run"]

_current: contextvars.ContextVar[RunStreams | None] = contextvars.ContextVar(
    "streamguard_run", default=None
)


class RunStreams(owners.Scope):
    """The streams of one background run; ``stop`` ends those open and any opened later."""

    __slots__ = ()

    def add(self, core: StreamCore) -> None:
        # A run may open many streams one after another: forget those already stopped.
        with self._lock:
            self._cores = [c for c in self._cores if c.stop_reason is None]
        super().add(core)

    def set(self) -> contextvars.Token[RunStreams | None]:
        return _current.set(self)

    @staticmethod
    def reset(token: contextvars.Token[RunStreams | None]) -> None:
        _current.reset(token)


def current_run() -> RunStreams | None:
    return _current.get()


owners.register(current_run)
