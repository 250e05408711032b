"""What every benchmark shares: the runtime under test, OTel modes, interleaving, statistics.

Figures are dicts (JSON-ready) built by ``figure()``; ``goal()`` states a goal on one metric of
a figure and says whether it is met and by how much it is missed.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

HMAC_SECRET = bytes(range(32))
KEY_ID = "bench"

# Set by the worker from its command line; read by the benchmarks.
OTEL_MODE = "noop"
QUICK = False


# --------------------------------------------------------------------------- runtime
class CountingSink:
    """A receipt sink that counts and forgets: for memory figures, where keeping every receipt
    (as ``InMemoryReceiptSink`` does) would be counted as the guard's memory."""

    def __init__(self) -> None:
        self.count = 0

    def emit(self, receipt: Any) -> None:
        self.count += 1

    def clear(self) -> None:
        self.count = 0

    def __len__(self) -> int:
        return self.count


def make_runtime(
    *,
    signer: str = "hmac",
    stall_timeout: float | None = 30.0,
    keep_receipts: bool = True,
    **options: Any,
) -> Any:
    """A runtime like the tests': HMAC (or Ed25519) signer, an in-memory sink, no ledger file.

    ``keep_receipts=False`` counts receipts instead of keeping them (memory figures). The
    environment is ignored (``environ={}``) so that a ``STREAMGUARD_*`` variable of the machine
    cannot change what is measured.
    """
    from streamguard._config import Options
    from streamguard._runtime import Runtime
    from streamguard.testing.sinks import InMemoryReceiptSink

    opts = Options.resolve({"stall_timeout": stall_timeout, **options}, environ={})
    sink = InMemoryReceiptSink() if keep_receipts else CountingSink()
    return Runtime(opts, signer=make_signer(signer), sinks=[sink])


def make_signer(kind: str) -> Any:
    from streamguard._receipts.signing import Ed25519Signer, HmacSigner

    if kind == "hmac":
        return HmacSigner(HMAC_SECRET, key_id=KEY_ID)
    if kind == "ed25519":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519Signer(Ed25519PrivateKey.generate(), key_id=KEY_ID)
    raise ValueError(f"unknown signer {kind!r}")


def install(runtime: Any) -> Any:
    """Make ``runtime`` the process runtime (what ``guard()`` and the SDK patches use)."""
    from streamguard._runtime import set_runtime

    return set_runtime(runtime)


def clear_sinks(runtime: Any) -> None:
    for sink in runtime.sinks:
        clear = getattr(sink, "clear", None)
        if clear is not None:
            clear()


def instrument_kwargs() -> dict[str, Any]:
    """``streamguard.instrument(**instrument_kwargs())``: the same signer and sink kind."""
    from streamguard.testing.sinks import InMemoryReceiptSink

    return {"signer": make_signer("hmac"), "sinks": [InMemoryReceiptSink()], "stall_timeout": 30.0}


# ------------------------------------------------------------------------------ OTel
class OTelSDK:
    """Global SDK providers: tracer (simple span processor), logger (simple log processor) and
    meter (in-memory reader). ``retain=True`` keeps finished spans and log records in the SDK's
    in-memory exporters; ``retain=False`` drops them after export, as a real exporter would
    after sending them, so memory figures measure the guard and not a growing exporter list."""

    def __init__(self, retain: bool) -> None:
        from opentelemetry import _logs, metrics, trace
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            InMemoryLogRecordExporter,
            LogRecordExporter,
            LogRecordExportResult,
            SimpleLogRecordProcessor,
        )
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        class DropSpans(SpanExporter):
            def export(self, spans: Any) -> Any:
                return SpanExportResult.SUCCESS

        class DropLogs(LogRecordExporter):
            def export(self, batch: Any) -> Any:
                return LogRecordExportResult.SUCCESS

            def shutdown(self) -> None:
                return None

            def force_flush(self, timeout_millis: int = 30000) -> bool:
                return True

        self.spans: Any = InMemorySpanExporter() if retain else DropSpans()
        # The SDK's InMemoryLogRecordExporter has no annotations (mypy: untyped call).
        self.logs: Any = InMemoryLogRecordExporter() if retain else DropLogs()  # type: ignore[no-untyped-call]
        self.metrics = InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        trace.set_tracer_provider(tracer_provider)
        _logs.set_logger_provider(logger_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.metrics]))

    def clear(self) -> None:
        for exporter in (self.spans, self.logs):
            clear = getattr(exporter, "clear", None)
            if clear is not None:
                clear()


_otel: OTelSDK | None = None


def setup_otel(mode: str, *, retain: bool = False) -> OTelSDK | None:
    """``noop``: leave the OTel API without providers (its no-op default); ``sdk``: install
    SDK providers once per process."""
    global _otel
    if mode == "noop":
        return None
    if _otel is None:
        _otel = OTelSDK(retain)
    return _otel


def clear_otel() -> None:
    if _otel is not None:
        _otel.clear()


# ------------------------------------------------------------------------ measuring
def interleave(
    variants: dict[str, Callable[[], float]], reps: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Run every variant ``reps`` times, interleaved: A B C, C B A, A B C, ...

    Reversing the order every other repetition cancels a linear drift of the machine; a
    collection before each run keeps one variant's garbage off the other's clock. Warm-up
    runs (imports, caches, the first watchdog thread) are discarded.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            gc.collect()
            variants[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            gc.collect()
            out[name].append(variants[name]())
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[k])


def paired_ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Ratio of each repetition to the baseline run next to it."""
    return [v / b for v, b in zip(values, baseline, strict=True) if b > 0]


def spread(values: Sequence[float]) -> list[float]:
    """[min, max]: how much the repetitions disagree."""
    return [float(min(values)), float(max(values))] if values else []


def figure(
    fid: str,
    title: str,
    unit: str,
    *,
    baseline_name: str,
    baseline: Sequence[float],
    name: str,
    values: Sequence[float],
    note: str = "",
) -> dict[str, Any]:
    """One measured figure against its same-run baseline: medians, paired ratio, spread."""
    ratios = paired_ratios(values, baseline)
    b, v = median(baseline), median(values)
    return {
        "id": fid,
        "title": title,
        "unit": unit,
        "baseline_name": baseline_name,
        "baseline": b,
        "name": name,
        "value": v,
        "added": v - b,
        "ratio": median(ratios) if ratios else (v / b if b else float("nan")),
        "ratio_spread": spread(ratios),
        "reps": len(values),
        "note": note,
    }


def latency_figure(
    fid: str,
    title: str,
    unit: str,
    *,
    baseline_name: str,
    baseline: Sequence[float],
    name: str,
    values: Sequence[float],
    note: str = "",
) -> dict[str, Any]:
    """A distribution (one value per event) against its baseline's: p50/p90/p99/max, and the
    ratios of the p50s and the p99s. ``value`` is the p99, ``ratio`` the p99 ratio."""
    fig: dict[str, Any] = {
        "id": fid,
        "title": title,
        "unit": unit,
        "baseline_name": baseline_name,
        "name": name,
        "n": len(values),
        "baseline_n": len(baseline),
        "note": note,
    }
    for label, data in (("", values), ("baseline_", baseline)):
        for p in (50, 90, 99):
            fig[f"{label}p{p}"] = percentile(data, p) if data else None
        fig[f"{label}max"] = float(max(data)) if data else None
    fig["value"], fig["baseline"] = fig["p99"], fig["baseline_p99"]
    if fig["baseline_p50"]:
        fig["ratio_p50"] = fig["p50"] / fig["baseline_p50"]
    if fig["baseline_p99"]:
        fig["ratio"] = fig["p99"] / fig["baseline_p99"]
    fig["added"] = (fig["p99"] or 0.0) - (fig["baseline_p99"] or 0.0) if baseline else None
    return fig


def goal(fig: dict[str, Any], metric: str, op: str, limit: float, text: str) -> dict[str, Any]:
    """Attach a goal (``metric op limit``) to ``fig``; says whether it is met, else by how much."""
    value = float(fig[metric])
    met = {"<": value < limit, "<=": value <= limit, ">=": value >= limit}[op]
    fig["goal"] = {
        "text": text,
        "metric": metric,
        "op": op,
        "limit": limit,
        "value": value,
        "met": met,
        "missed_by": 0.0 if met else abs(value - limit),
        "missed_by_factor": 0.0
        if met or value == 0 or limit == 0
        else max(value / limit, limit / value),
    }
    return fig


def now_ns() -> int:
    return time.perf_counter_ns()


# --------------------------------------------------------------------------- machine
PACKAGES = (
    "streamguard",
    "openai",
    "anthropic",
    "ollama",
    "wrapt",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "httpx",
    "httpx2",
    "uvicorn",
    "cryptography",
)


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and the versions of the packages that matter."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in PACKAGES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": None if mem_kb is None else round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "packages": versions,
        "loadavg_at_start": load,
    }


class Frames:
    """A response body served one frame per read, sync or async (httpx's stream protocol).

    Mixed with the client library's ``SyncByteStream``/``AsyncByteStream`` (by
    ``sdk_overhead._handler`` and ``floor.Replay``), as each library checks that a response
    stream is one of its own.
    """

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    def __iter__(self) -> Iterator[bytes]:
        yield from self.frames

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self.frames:
            yield frame

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
