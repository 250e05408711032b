"""Shared fixtures: OTel in-memory pipelines (installed once), a fresh runtime per test.

The upstream, the receipt sink and ``instrument_with`` come from StreamGuard's public pytest
plugin (``streamguard.testing.pytest_plugin``), which every tier's conftest builds on.
"""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Iterator

import pytest
from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamguard import _runtime
from streamguard._config import Options
from streamguard._engine.loopthread import stop_background_loop
from streamguard._receipts.signing import HmacSigner
from streamguard.testing.redis_server import RedisServerMissing, redis_server
from streamguard.testing.sinks import InMemoryReceiptSink

pytest_plugins = ["streamguard.testing.pytest_plugin"]

HMAC_SECRET = bytes(range(32))


class _Spans(InMemorySpanExporter):
    # Receipts (span end, receipt event) are emitted off the stopping thread: a test reads what
    # every stream that ended left behind.
    def get_finished_spans(self):  # type: ignore[no-untyped-def]
        _runtime.flush_all(10.0)
        return super().get_finished_spans()


class _Logs(InMemoryLogRecordExporter):
    def get_finished_logs(self):  # type: ignore[no-untyped-def]
        _runtime.flush_all(10.0)
        return super().get_finished_logs()


class _Metrics(InMemoryMetricReader):
    def get_metrics_data(self):  # type: ignore[no-untyped-def]
        _runtime.flush_all(10.0)
        return super().get_metrics_data()


class OTel:
    def __init__(self) -> None:
        self.spans = _Spans()
        self.logs = _Logs()
        self.metrics = _Metrics()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        meter_provider = MeterProvider(metric_readers=[self.metrics])
        trace.set_tracer_provider(tracer_provider)
        _logs.set_logger_provider(logger_provider)
        metrics.set_meter_provider(meter_provider)

    def clear(self) -> None:
        self.spans.clear()
        self.logs.clear()
        self.metrics.get_metrics_data()  # drains cumulative points read so far

    def metric_points(self) -> dict[str, list[object]]:
        """metric name -> data points, from one collection."""
        found: dict[str, list[object]] = {}
        data = self.metrics.get_metrics_data()
        if data is None:
            return found
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


_OTEL = OTel()


@pytest.fixture
def otel() -> OTel:
    return _OTEL


@pytest.fixture
def runtime(sink: InMemoryReceiptSink) -> Iterator[_runtime.Runtime]:
    """A fresh runtime with an HMAC key and an in-memory receipt sink, installed globally."""
    rt = _runtime.Runtime(
        Options.resolve({"stall_timeout": 30.0}, environ={}),
        signer=HmacSigner(HMAC_SECRET, key_id="test"),
        sinks=[sink],
    )
    previous = _runtime.set_runtime(rt)
    _OTEL.clear()
    yield rt
    rt.shutdown(timeout=2.0)
    _runtime.set_runtime(previous)


@pytest.fixture(autouse=True)
def _no_internal_faults() -> Iterator[None]:
    """Every test fails if StreamGuard reported a fault of its own machinery.

    The full collection afterwards runs the finalisers of what the test dropped (where faults
    would show). Everything alive before the test is frozen out of the collector's sight, so
    that collection takes milliseconds instead of ~250 ms in a process with every SDK loaded.
    """
    del _runtime.faults[:]
    gc.freeze()
    yield
    gc.collect()
    faults = list(_runtime.faults)
    del _runtime.faults[:]
    assert not faults, f"StreamGuard internal faults: {faults}"


@pytest.fixture(autouse=True, scope="session")
def _no_leftover_threads() -> Iterator[None]:
    yield
    gc.unfreeze()
    stop_background_loop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the session (Debian's; `make test` installs it)."""
    try:
        with redis_server() as url:
            yield url
    except RedisServerMissing:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: `make test` installs it (Debian redis-server)")
        pytest.skip("redis-server is not installed: run `make system-deps`")
