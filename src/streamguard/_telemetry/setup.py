"""``configure_otel()``: OTLP exporters for traces, metrics and logs, for apps with no OTel."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import _logs, metrics, trace

from streamguard._extras import require

__all__ = ["configure_otel"]


def configure_otel(
    *, service_name: str | None = None, protocol: str | None = None, export_interval_s: float = 10.0
) -> dict[str, Any]:
    """Install global tracer, meter and logger providers exporting over OTLP.

    Endpoints, headers and the protocol come from the standard ``OTEL_EXPORTER_OTLP_*``
    variables (``protocol`` overrides ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` or
    ``http/protobuf``, the default). Returns the providers so the caller can shut them down.
    Requires the ``otlp`` extra. Example::

        import streamguard
        streamguard.configure_otel(service_name="chat-api")
        streamguard.instrument()
    """
    proto = protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    exporter = "grpc" if proto == "grpc" else "http"
    require(
        "opentelemetry.sdk",
        f"opentelemetry.exporter.otlp.proto.{exporter}",
        feature="configure_otel() (the OTel SDK and OTLP exporters)",
        extra="otlp",
    )
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
            OTLPLogExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )

    attributes = {"service.name": service_name} if service_name else {}
    resource = Resource.create(attributes)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[
            PeriodicExportingMetricReader(
                OTLPMetricExporter(), export_interval_millis=export_interval_s * 1000
            )
        ],
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _logs.set_logger_provider(logger_provider)
    return {
        "tracer_provider": tracer_provider,
        "meter_provider": meter_provider,
        "logger_provider": logger_provider,
    }
