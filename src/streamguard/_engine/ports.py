"""What plugs into the engine: the host that runs its streams, and a fault reporter.

Floor: ``_engine`` (imports ``exceptions``, ``_config``, ``_reasons``, ``_receipts`` and the
engine itself, nothing above). The engine knows no SDK, no web framework, no money and no
process-wide state: whatever a stream needs from the process (options, timers, receipts,
the registry of active streams, cross-process cancel) it asks of its ``Host``, a protocol
defined here and implemented by the composition root (``streamguard._runtime.Runtime``),
which installs itself with ``install()`` when it is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from streamguard._config import Options
    from streamguard._engine.core import StreamCore
    from streamguard._engine.watchdog import Timers

__all__ = ["FaultReporter", "Host", "Publisher", "host", "install", "report_fault"]

log = logging.getLogger("streamguard")


class Publisher(Protocol):
    """Cross-process cancel: ask every process to stop a stream id."""

    def publish(self, stream_id: str, reason: str, detail: str | None) -> int: ...


class Host(Protocol):
    """What a stream needs from the process that runs it."""

    options: Options
    remote: Publisher | None

    def stream_opened(self, core: StreamCore) -> None:
        """A core was created (span, active count)."""

    def begin(self, core: StreamCore, request: Any = None) -> None:
        """The request is about to be sent: pre-flight budgets, policies, ownership."""

    def watch(self, core: StreamCore, timers: Timers | None = None) -> None:
        """Arm the stream's stall / idle / deadline timers."""

    def unwatch(self, core: StreamCore) -> None:
        """The stream stopped: its timers are no longer needed."""

    def finalize(self, core: StreamCore) -> None:
        """Seal, sign and emit the stream's one receipt (then ``core.sealed``)."""

    def active(self) -> list[StreamCore]:
        """Every stream of this process that has no receipt yet."""

    def find(self, stream_id: str) -> StreamCore | None:
        """The active stream with this id, if it runs in this process."""


class FaultReporter(Protocol):
    def __call__(self, where: str, exc: BaseException) -> None: ...


def _log_fault(where: str, exc: BaseException) -> None:
    log.warning("StreamGuard internal fault in %s (the stream goes on): %r", where, exc)


_host: Callable[[], Host] | None = None
_report: FaultReporter = _log_fault


def install(host_of: Callable[[], Host], reporter: FaultReporter) -> None:
    """Called once by the composition root: ``host_of()`` returns the current host."""
    global _host, _report
    _host, _report = host_of, reporter


def host() -> Host:
    """The host of new streams (the installed runtime)."""
    if _host is None:  # importing any streamguard module imports the package, which installs it
        raise RuntimeError("StreamGuard's runtime is not installed (import streamguard first).")
    return _host()


def report_fault(where: str, exc: BaseException) -> None:
    """A fault of StreamGuard's own machinery: reported once, the stream goes on (G7)."""
    _report(where, exc)
