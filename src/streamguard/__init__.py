"""StreamGuard: stops LLM token bleed.

``instrument()`` at start-up guards every stream of the installed provider SDKs: the upstream
is closed the moment its consumer is gone, buffers are bounded, and every stream gets exactly
one signed, hash-chained receipt, emitted on its span and as an OTLP log record.
"""

from __future__ import annotations

from streamguard import _forking  # noqa: F401 (registers the at-fork hook)
from streamguard._config import Options
from streamguard._engine.guards import GuardedAsyncIterator, GuardedIterator
from streamguard._engine.handle import StreamHandle, active_streams, cancel_stream
from streamguard._engine.policy import StreamPolicy, Verdict
from streamguard._engine.reasons import Category, Outcome, StopReason
from streamguard._engine.session import StreamSession
from streamguard._instrument import instrument, is_instrumented, uninstrument
from streamguard._money.budget import Budget, InMemoryBudgetStore
from streamguard._money.context import context, limits
from streamguard._money.pricing import Price
from streamguard._receipts.model import Receipt
from streamguard._runtime import flush_all as flush
from streamguard._telemetry.setup import configure_otel
from streamguard.exceptions import (
    BudgetExceeded,
    ConfigurationError,
    MissingExtraError,
    ReceiptVerificationError,
    StreamBlocked,
    StreamCancelled,
    StreamGuardError,
)
from streamguard.providers._base import handle_of
from streamguard.providers._single import guard

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "BudgetExceeded",
    "Category",
    "ConfigurationError",
    "GuardedAsyncIterator",
    "GuardedIterator",
    "InMemoryBudgetStore",
    "MissingExtraError",
    "Options",
    "Outcome",
    "Price",
    "Receipt",
    "ReceiptVerificationError",
    "StopReason",
    "StreamBlocked",
    "StreamCancelled",
    "StreamGuardError",
    "StreamHandle",
    "StreamPolicy",
    "StreamSession",
    "Verdict",
    "__version__",
    "active_streams",
    "cancel_stream",
    "configure_otel",
    "context",
    "flush",
    "guard",
    "handle_of",
    "instrument",
    "is_instrumented",
    "limits",
    "uninstrument",
]
