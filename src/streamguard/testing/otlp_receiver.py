"""A local OTLP receiver for tests: what the real OTLP exporters put on the wire.

``OTLPReceiver`` listens on ``127.0.0.1`` with both OTLP transports, built on the
``opentelemetry-proto`` messages (the ``otlp`` extra):

- gRPC: ``TraceService``, ``MetricsService`` and ``LogsService`` ``Export``;
- HTTP/protobuf: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` (gzip or identity).

Every accepted request is decoded and kept, in arrival order, with its signal and transport.
``receipt_lines()`` turns what arrived into OTLP/JSON lines that ``streamguard verify`` (and
``streamguard report``) read, so a test can check receipts exactly as they crossed the wire::

    with OTLPReceiver() as rx:
        env = rx.exporter_environment("grpc")   # OTEL_EXPORTER_OTLP_* for a subprocess
        ...                                       # run the instrumented app with env
        rx.wait_for(lambda r: len(r.log_records()) >= 3)
        report = verify_receipts(rx.receipt_lines(), verifier)

Guarantees: ``start()`` returns once both servers accept connections; ``stop()`` stops both and
joins their threads (a second call is a no-op); a request that does not parse is answered 400
(HTTP) or INVALID_ARGUMENT (gRPC) and not recorded.
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

# grpcio and protobuf ship no type information (types-protobuf may or may not be installed).
import grpc  # type: ignore[import-untyped,unused-ignore]
from google.protobuf import json_format  # type: ignore[import-untyped,unused-ignore]
from google.protobuf.message import (  # type: ignore[import-untyped,unused-ignore]
    DecodeError,
    Message,
)
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["OTLPReceiver", "Received"]

# signal -> (request type, response type, HTTP path)
_SIGNALS: dict[str, tuple[type[Message], type[Message], str]] = {
    "traces": (
        trace_pb.ExportTraceServiceRequest,
        trace_pb.ExportTraceServiceResponse,
        "/v1/traces",
    ),
    "metrics": (
        metrics_pb.ExportMetricsServiceRequest,
        metrics_pb.ExportMetricsServiceResponse,
        "/v1/metrics",
    ),
    "logs": (logs_pb.ExportLogsServiceRequest, logs_pb.ExportLogsServiceResponse, "/v1/logs"),
}

# The generated *_pb2_grpc modules are untyped.
_ADD_SERVICER: dict[str, Any] = {
    "traces": trace_grpc.add_TraceServiceServicer_to_server,
    "metrics": metrics_grpc.add_MetricsServiceServicer_to_server,
    "logs": logs_grpc.add_LogsServiceServicer_to_server,
}


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted export request: ``signal`` (traces|metrics|logs), ``transport``
    (grpc|http) and the decoded ``Export*ServiceRequest``."""

    signal: str
    transport: str
    message: Any


class OTLPReceiver:
    """OTLP over gRPC and HTTP/protobuf on 127.0.0.1 (ephemeral ports), recording requests."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._lock = threading.Condition()
        self._received: list[Received] = []
        self._grpc: Any = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._http: http.server.ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port = 0
        self.http_port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> OTLPReceiver:
        """Start both servers; returns once they accept connections."""
        if self._grpc is not None:
            raise RuntimeError("This OTLPReceiver is already started; create another one.")
        self._executor = futures.ThreadPoolExecutor(4, thread_name_prefix="otlp-receiver-grpc")
        server = grpc.server(self._executor)
        for signal, add_servicer in _ADD_SERVICER.items():
            add_servicer(_Servicer(self, signal), server)
        self.grpc_port = int(server.add_insecure_port(f"{self._host}:0"))
        server.start()
        self._grpc = server
        self._http = http.server.ThreadingHTTPServer((self._host, 0), _http_handler(self))
        self._http.daemon_threads = True
        self.http_port = int(self._http.server_address[1])
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, name=f"otlp-receiver-{self.http_port}", daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Stop both servers and join their threads. Idempotent."""
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait(5)
            self._grpc = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(5)
            self._http_thread = None

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------
    @property
    def grpc_endpoint(self) -> str:
        """``http://host:port`` of the gRPC server (``http`` means no TLS)."""
        return f"http://{self._host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """Base URL of the HTTP server; exporters append ``/v1/{signal}``."""
        return f"http://{self._host}:{self.http_port}"

    def exporter_environment(self, protocol: str) -> dict[str, str]:
        """``OTEL_EXPORTER_OTLP_*`` variables that point OTel's exporters here.

        ``protocol`` is ``grpc`` or ``http/protobuf``.
        """
        if protocol not in ("grpc", "http/protobuf"):
            raise ValueError(f"protocol must be 'grpc' or 'http/protobuf', got {protocol!r}")
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }

    # -- what arrived ----------------------------------------------------------------------
    @property
    def received(self) -> list[Received]:
        """Every accepted request so far, oldest first (a new list)."""
        with self._lock:
            return list(self._received)

    def wait_for(self, condition: Callable[[OTLPReceiver], bool], timeout: float = 10.0) -> None:
        """Wait until ``condition(self)`` holds; raises ``TimeoutError`` naming what arrived."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    counts = {s: len(self.messages(s)) for s in _SIGNALS}
                    raise TimeoutError(f"OTLP receiver: condition not met; requests: {counts}")
                self._lock.wait(min(left, 0.1))

    def messages(self, signal: str, transport: str | None = None) -> list[Any]:
        """Decoded requests of one signal (and transport, if given)."""
        return [
            r.message
            for r in self.received
            if r.signal == signal and (transport is None or r.transport == transport)
        ]

    def spans(self, transport: str | None = None) -> list[Span]:
        return [
            span
            for request in self.messages("traces", transport)
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def log_records(self, transport: str | None = None) -> list[LogRecord]:
        return [
            record
            for request in self.messages("logs", transport)
            for resource in request.resource_logs
            for scope in resource.scope_logs
            for record in scope.log_records
        ]

    def metric_names(self, transport: str | None = None) -> set[str]:
        return {
            metric.name
            for request in self.messages("metrics", transport)
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def receipt_lines(self, signal: str = "logs", transport: str | None = None) -> list[str]:
        """One OTLP/JSON line per request of ``signal`` (``logs`` or ``traces``), as the
        Collector's file exporter writes them: input for ``streamguard verify``."""
        return [json.dumps(json_format.MessageToDict(m)) for m in self.messages(signal, transport)]

    def _record(self, signal: str, transport: str, message: Any) -> None:
        with self._lock:
            self._received.append(Received(signal, transport, message))
            self._lock.notify_all()


class _Servicer:
    """The ``Export`` method of one OTLP gRPC service (the generated base classes add nothing)."""

    def __init__(self, receiver: OTLPReceiver, signal: str) -> None:
        self._receiver = receiver
        self._signal = signal

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method's name
        self._receiver._record(self._signal, "grpc", request)
        return _SIGNALS[self._signal][1]()


def _http_handler(receiver: OTLPReceiver) -> type[http.server.BaseHTTPRequestHandler]:
    paths = {path: (signal, req, resp) for signal, (req, resp, path) in _SIGNALS.items()}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # http.server's method name
            route = paths.get(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if route is None:
                self._reply(404, b"")
                return
            signal, request_type, response_type = route
            try:
                encoding = (self.headers.get("Content-Encoding") or "identity").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                message = request_type()
                message.ParseFromString(body)
            except (OSError, EOFError, zlib.error, DecodeError):
                self._reply(400, b"")
                return
            receiver._record(signal, "http", message)
            self._reply(200, response_type().SerializeToString())

        def _reply(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler
