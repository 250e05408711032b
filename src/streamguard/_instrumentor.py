"""The ``opentelemetry_instrumentor`` entry point: ``opentelemetry-instrument python app.py``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from streamguard._instrument import instrument, uninstrument

__all__ = ["StreamGuardInstrumentor"]


class StreamGuardInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Guards provider streams; options come from the ``STREAMGUARD_*`` environment."""

    def instrumentation_dependencies(self) -> Collection[str]:
        # Every SDK is optional: each provider patcher skips the ones that are not installed.
        return []

    def _instrument(self, **kwargs: Any) -> None:
        kwargs.pop("tracer_provider", None)
        kwargs.pop("meter_provider", None)
        instrument(**kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
