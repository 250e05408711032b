"""The one exception hierarchy of StreamGuard.

::

    StreamGuardError                  root: catch this to catch everything StreamGuard raises
    ├── StreamCancelled               the guard stopped a stream the application was still reading
    │   ├── BudgetExceeded            a budget ran out (before the request or mid-stream)
    │   └── StreamBlocked             a streaming policy blocked the output
    ├── ReceiptVerificationError      a receipt failed its hash, signature or chain check
    └── ConfigurationError            bad configuration, raised at set-up (also a ValueError)
        └── MissingExtraError         an optional feature's extra is not installed (also an
                                      ImportError): the message names the pip install to run

    EphemeralKeyWarning               (a UserWarning) receipts are signed with a throw-away key

Policy decisions (``BudgetExceeded``, ``StreamBlocked``) and errors of the provider SDK always
reach the application. Faults inside StreamGuard's own telemetry never do: they are logged once
and the stream goes on.
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "ConfigurationError",
    "EphemeralKeyWarning",
    "MissingExtraError",
    "ReceiptVerificationError",
    "StreamBlocked",
    "StreamCancelled",
    "StreamGuardError",
]


class StreamGuardError(Exception):
    """Root of every exception StreamGuard raises."""


class StreamCancelled(StreamGuardError):
    """The guard stopped a stream while the application was still reading it.

    ``reason`` is the stop reason (see ``streamguard.StopReason``) and ``stream_id`` names the
    stream, so the receipt can be found.
    """

    def __init__(self, message: str, *, reason: str, stream_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.stream_id = stream_id


class BudgetExceeded(StreamCancelled):
    """A budget ran out: before the request (nothing was sent) or mid-stream."""

    def __init__(
        self,
        message: str,
        *,
        stream_id: str | None = None,
        scope: str | None = None,
        limit_usd: str | None = None,
    ) -> None:
        super().__init__(message, reason="budget_exceeded", stream_id=stream_id)
        self.scope = scope
        self.limit_usd = limit_usd


class StreamBlocked(StreamCancelled):
    """A streaming policy blocked the output; the blocked text never reached the application."""

    def __init__(
        self,
        message: str,
        *,
        stream_id: str | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(message, reason="content_policy", stream_id=stream_id)
        self.category = category


class ReceiptVerificationError(StreamGuardError):
    """A receipt failed verification; ``receipt_id`` and ``line`` say which one."""

    def __init__(
        self, message: str, *, receipt_id: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.receipt_id = receipt_id
        self.line = line


class ConfigurationError(StreamGuardError, ValueError):
    """Bad configuration. The message names the argument or environment variable to fix."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class MissingExtraError(ConfigurationError, ModuleNotFoundError):
    """An optional feature needs a package that is not installed.

    The message is one line naming the extra to install, e.g.
    ``configure_otel() needs the OTel SDK and OTLP exporters: pip install "streamguard[otlp]"``.
    It is also a ``ModuleNotFoundError``, so code that probes for a feature with
    ``except ImportError`` keeps working.
    """

    def __init__(self, feature: str, extra: str, *, missing: str | None = None) -> None:
        super().__init__(f'{feature} needs the "{extra}" extra: pip install "streamguard[{extra}]"')
        self.extra = extra
        self.name = missing


class EphemeralKeyWarning(UserWarning):
    """No signing key is configured: receipts are signed with a key that dies with the process."""
