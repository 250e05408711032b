"""Spans, metrics and log records: the only module that names OTel instruments.

StreamGuard uses the global OTel providers and never installs any unless asked
(``streamguard.configure_otel()``). Instruments are created lazily through the API's proxy
objects, so providers installed after ``instrument()`` are picked up.

Nothing here runs per chunk: a span starts when a stream opens and everything else happens
once, when the receipt is sealed.

Floor: ``_telemetry`` (imports ``_receipts`` and the OTel API; not the engine). What it reads
of a stream is the ``StreamFacts`` protocol below, which the engine's cores satisfy, and the
sealed receipt.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import _logs, metrics, trace
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from streamguard._telemetry import names as n
from streamguard._telemetry.totals import Counted, counted, totals

if TYPE_CHECKING:
    from streamguard._receipts.model import Receipt

__all__ = ["StreamFacts", "Telemetry"]


class StreamFacts(Protocol):
    """What telemetry reads of a stream (an engine core satisfies it), besides its receipt.

    ``span`` is telemetry's own: it is set when the stream opens and ended when it finishes.
    Times are Unix ns (``t_*``) or monotonic ns (``*_mono``); None where it did not happen.
    """

    stream_id: str
    provider: str
    operation: str
    model: str | None
    request_max_tokens: int | None
    server_address: str | None
    server_port: int | None
    span: Any
    stop_reason: Any  # a StopReason, or None while the stream runs
    rejected: bool
    detail: str | None
    error_type: str | None
    response_id: str | None
    response_model: str | None
    finish_reasons: list[str]
    usage_exact: int | None
    estimated_output_tokens: int | None
    t_started: int
    t_first_chunk: int | None
    t_stop_requested: int | None
    t_stop_mono: int | None
    t_upstream_closed: int | None
    t_upstream_closed_mono: int | None

    def later_signals(self) -> list[str]: ...


_SCOPE = "streamguard"


class Telemetry:
    """Emits one stream's span, receipt event, receipt log record and metrics."""

    def __init__(self, version: str) -> None:
        self._version = version
        self._lock = threading.Lock()
        self._ready = False
        # (provider, model, outcome, reason, category, error type) -> attribute sets.
        self._sets: dict[tuple[str, ...], _AttributeSets] = {}
        self._active: dict[str, Counted] = {}  # provider -> its streams.active attribute set

    def _setup(self) -> None:
        with self._lock:
            if self._ready:
                return
            self.tracer = trace.get_tracer(_SCOPE, self._version)
            self.logger = _logs.get_logger(_SCOPE, self._version)
            meter = metrics.get_meter(_SCOPE, self._version)
            self.token_usage = _histogram(meter, n.TOKEN_USAGE, n.TOKEN_BUCKETS)
            self.duration = _histogram(meter, n.OPERATION_DURATION, n.DURATION_BUCKETS)
            self.ttfc = _histogram(meter, n.TTFC, n.TTFC_BUCKETS)
            self.stop_latency = _histogram(meter, n.STOP_LATENCY, n.STOP_LATENCY_BUCKETS)
            self.drift = _histogram(meter, n.ESTIMATE_DRIFT, n.DRIFT_BUCKETS)
            # streams, streams.active, tokens, cost, receipts: summed here, observed (totals).
            totals.register(meter)
            self.store_errors = meter.create_counter(*n.BUDGET_STORE_ERRORS)
            self._ready = True

    # ---------------------------------------------------------------------- stream open
    def stream_started(self, core: StreamFacts) -> None:
        if not self._ready:
            self._setup()
        attributes: dict[str, Any] = {
            n.PROVIDER: core.provider,
            n.OPERATION: core.operation,
            n.REQUEST_STREAM: True,
            n.STREAM_ID: core.stream_id,
        }
        if core.model:
            attributes[n.REQUEST_MODEL] = core.model
        if core.request_max_tokens is not None:
            attributes[n.REQUEST_MAX_TOKENS] = core.request_max_tokens
        if core.server_address:
            attributes[n.SERVER_ADDRESS] = core.server_address
        if core.server_port:
            attributes[n.SERVER_PORT] = core.server_port
        name = f"{core.operation} {core.model}" if core.model else core.operation
        core.span = self.tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes=attributes, start_time=core.t_started
        )
        totals.add(_ACTIVE, 1, self._active_set(core.provider))

    def _active_set(self, provider: str) -> Counted:
        found = self._active.get(provider)
        if found is None:
            found = self._active[provider] = counted({n.PROVIDER: provider})
        return found

    def store_error(self, budget: str, fail_open: bool) -> None:
        if not self._ready:
            self._setup()
        self.store_errors.add(1, {n.BUDGET: budget, n.RESULT: "open" if fail_open else "closed"})

    def stream_discarded(self, core: StreamFacts, why: str) -> None:
        """A stream StreamGuard could not guard: its span ends marked so, and no receipt."""
        if core.span is not None:
            core.span.set_attribute("streamguard.unguarded", why)
            core.span.end()
            totals.add(_ACTIVE, -1, self._active_set(core.provider))

    def span_ids(self, core: StreamFacts) -> tuple[str | None, str | None]:
        ctx = core.span.get_span_context() if core.span is not None else None
        if ctx is None or not ctx.is_valid:
            return None, None
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

    # ---------------------------------------------------------------------- stream end
    def stream_finished(
        self, core: StreamFacts, receipt: Receipt | None, canonical: bytes = b""
    ) -> None:
        """Receipt event and log record, span end, metrics. Never raises past the runtime.

        ``canonical`` is the receipt's canonical JSON as sealed (so it is not encoded twice).
        """
        span = core.span
        provider, model = core.provider, core.model or "unknown"
        reason = str(core.stop_reason)
        if receipt is not None:
            outcome = receipt.outcome
            category = receipt.category or ""
        else:
            outcome = str(core.stop_reason.outcome(rejected=core.rejected))
            category = str(core.stop_reason.category or "")
        base = {n.PROVIDER: provider, n.REQUEST_MODEL: model}
        try:
            if span is not None and span.is_recording():
                self._finish_span(core, span, receipt, outcome, reason, category, canonical)
            elif span is not None:
                span.end()
            if receipt is not None:
                self._emit_log(core, span, receipt)
        finally:
            totals.add(_ACTIVE, -1, self._active_set(provider))
            self._record_metrics(core, receipt, base, outcome, reason, category)

    def _finish_span(
        self,
        core: StreamFacts,
        span: Any,
        receipt: Receipt | None,
        outcome: str,
        reason: str,
        category: str,
        canonical: bytes,
    ) -> None:
        attrs: dict[str, Any] = {n.OUTCOME: outcome, n.STOP_REASON: reason}
        if category:
            attrs[n.STOP_CATEGORY] = category
        if core.response_model:
            attrs[n.RESPONSE_MODEL] = core.response_model
        if core.response_id:
            attrs[n.RESPONSE_ID] = core.response_id
        if core.finish_reasons:
            attrs[n.FINISH_REASONS] = list(core.finish_reasons)
        if receipt is not None:
            if receipt.tokens.input is not None:
                attrs[n.USAGE_INPUT] = receipt.tokens.input
            attrs[n.USAGE_OUTPUT] = receipt.tokens.produced
        if core.t_first_chunk is not None:
            attrs[n.TIME_TO_FIRST_CHUNK] = (core.t_first_chunk - core.t_started) / 1e9
        later = core.later_signals()
        if later:
            attrs[n.LATER_SIGNALS] = later
        if outcome == "failed":
            attrs[n.ERROR_TYPE] = core.error_type or "upstream_error"
        span.set_attributes(attrs)
        if receipt is not None:
            event = _event_attributes(receipt, canonical or receipt.canonical_bytes())
            span.add_event(n.RECEIPT_EVENT, event, receipt.times.finalized)
        if outcome == "failed":
            span.set_status(Status(StatusCode.ERROR, core.detail or core.error_type))
        span.end(end_time=receipt.times.finalized if receipt is not None else None)

    def _emit_log(self, core: StreamFacts, span: Any, receipt: Receipt) -> None:
        context = trace.set_span_in_context(span) if span is not None else None
        # Logger.enabled() is not in opentelemetry-api 1.39 (what mistralai 2.0 allows): emit then.
        enabled = getattr(self.logger, "enabled", None)
        if enabled is not None and not enabled(context=context, event_name=n.RECEIPT_EVENT):
            return  # no logs pipeline: skip building the body
        attributes: dict[str, Any] = {
            n.EVENT_ATTR: "receipt",
            n.RECEIPT_ID: receipt.receipt_id,
            n.PROVIDER: receipt.provider,
            n.OUTCOME: receipt.outcome,
            n.STOP_REASON: receipt.reason,
        }
        if receipt.model:
            attributes[n.REQUEST_MODEL] = receipt.model
        self.logger.emit(
            timestamp=receipt.times.finalized,
            context=context,
            body=receipt.to_dict(),
            attributes=attributes,
            event_name=n.RECEIPT_EVENT,
        )

    def _record_metrics(
        self,
        core: StreamFacts,
        receipt: Receipt | None,
        base: dict[str, str],
        outcome: str,
        reason: str,
        category: str,
    ) -> None:
        if not _metrics_installed():
            return  # no meter provider: the API would drop every point; skip building them
        error = (core.error_type or "upstream_error") if outcome == "failed" else ""
        sets = self._attribute_sets(base, outcome, reason, category, error)
        add = totals.add
        add(_STREAMS, 1, sets.stream)
        add(_RECEIPTS, 1, sets.emitted if receipt is not None else sets.failed)
        end = core.t_upstream_closed or core.t_stop_requested or core.t_started
        self.duration.record(max(0, end - core.t_started) / 1e9, sets.duration)
        if core.t_first_chunk is not None:
            self.ttfc.record((core.t_first_chunk - core.t_started) / 1e9, sets.base)
        if core.t_stop_mono is not None and core.t_upstream_closed_mono is not None:
            latency = max(0, core.t_upstream_closed_mono - core.t_stop_mono) / 1e9
            self.stop_latency.record(latency, sets.reason)
        if core.usage_exact is not None and core.estimated_output_tokens is not None:
            # A histogram's sum is dropped once it sees a negative value: record the size of
            # the miss, and its direction as an attribute.
            miss = core.estimated_output_tokens - core.usage_exact
            direction = "over" if miss > 0 else "under" if miss < 0 else "exact"
            self.drift.record(abs(miss), sets.drift[direction])
        if receipt is None:
            return
        tokens = receipt.tokens
        if tokens.input is not None:
            self.token_usage.record(tokens.input, sets.token_type["input"])
        self.token_usage.record(tokens.produced, sets.token_type["output"])
        kinds = sets.kind
        for kind, value in (
            ("input", tokens.input),
            ("produced", tokens.produced),
            ("consumed", tokens.consumed),
            ("undelivered", tokens.undelivered),
            ("post_cutoff", tokens.post_cutoff),
            ("prevented", tokens.prevented_estimate),
        ):
            if value:
                add(_TOKENS, value, kinds[kind])
        cost = receipt.cost
        for kind, amount in (
            ("spent", _sum(cost.input, cost.output)),
            ("undelivered", cost.undelivered),
            ("prevented", cost.prevented_estimate),
        ):
            # "0" is what an amount of nothing is written as (pricing.money): no Decimal needed.
            if amount is not None and amount != "0" and Decimal(amount) > 0:
                # Metric values are floats by nature; receipts keep the exact decimal strings.
                add(_COST, float(amount), kinds[kind])

    def _attribute_sets(
        self, base: dict[str, str], outcome: str, reason: str, category: str, error: str
    ) -> _AttributeSets:
        """The metric attribute sets of one (provider, model, outcome, ...), built once."""
        key = (base[n.PROVIDER], base[n.REQUEST_MODEL], outcome, reason, category, error)
        sets = self._sets.get(key)
        if sets is None:
            if len(self._sets) >= _MAX_ATTRIBUTE_SETS:  # models are the application's: bound it
                self._sets.clear()
            sets = self._sets[key] = _AttributeSets(base, outcome, reason, category, error)
        return sets


class _AttributeSets:
    """Every attribute dict the metrics of a finished stream use, for one key. Shared between
    streams and threads: never mutated after construction (the SDK only reads them)."""

    __slots__ = (
        "base",
        "drift",
        "duration",
        "emitted",
        "failed",
        "kind",
        "reason",
        "stream",
        "token_type",
    )

    def __init__(
        self, base: dict[str, str], outcome: str, reason: str, category: str, error: str
    ) -> None:
        self.base = dict(base)
        stream = {**base, n.OUTCOME: outcome, n.STOP_REASON: reason}
        if category:
            stream[n.STOP_CATEGORY] = category
        # The counters' sets carry their totals key (see totals); the histograms' are dicts.
        self.stream = counted(stream)
        self.emitted = counted({n.OUTCOME: outcome, n.RESULT: "emitted"})
        self.failed = counted({n.OUTCOME: outcome, n.RESULT: "failed"})
        self.duration = {**base, n.ERROR_TYPE: error} if error else dict(base)
        self.reason = {n.STOP_REASON: reason}
        self.drift = {d: {**base, n.DRIFT_DIRECTION: d} for d in ("over", "under", "exact")}
        self.token_type = {t: {**base, n.TOKEN_TYPE: t} for t in ("input", "output")}
        kinds = ("input", "produced", "consumed", "undelivered", "post_cutoff", "prevented")
        self.kind = {k: counted({**base, n.KIND: k}) for k in (*kinds, "spent")}


_MAX_ATTRIBUTE_SETS = 1024
_ACTIVE, _STREAMS, _TOKENS, _COST, _RECEIPTS = (
    n.STREAMS_ACTIVE[0],
    n.STREAMS[0],
    n.TOKENS[0],
    n.COST[0],
    n.RECEIPTS[0],
)


def _metrics_installed() -> bool:
    """True once a real MeterProvider is installed (not the API's proxy or no-op one)."""
    global _meter_provider_seen
    provider = metrics.get_meter_provider()
    seen, installed = _meter_provider_seen
    if provider is not seen:
        # The providers are ABCs: an isinstance check runs Python code, so it runs once per
        # provider object, not once per stream. (A tuple swap: safe from any thread.)
        installed = not isinstance(provider, _NOOP_METER_PROVIDERS)
        _meter_provider_seen = (provider, installed)
    return installed


_NOOP_METER_PROVIDERS = (metrics.NoOpMeterProvider, _ProxyMeterProvider)
_meter_provider_seen: tuple[object, bool] = (None, False)


def _sum(a: str | None, b: str | None) -> str | None:
    if a is None and b is None:
        return None
    return str(Decimal(a or "0") + Decimal(b or "0"))


def _histogram(meter: metrics.Meter, spec: tuple[str, str, str], buckets: Any) -> Any:
    name, unit, description = spec
    return meter.create_histogram(
        name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
    )


def _event_attributes(receipt: Receipt, canonical: bytes) -> dict[str, Any]:
    tokens = receipt.tokens
    return {
        n.RECEIPT_ID: receipt.receipt_id,
        n.RECEIPT_SEQ: receipt.seq,
        n.RECEIPT_HASH: receipt.hash,
        n.RECEIPT_JSON: canonical.decode(),
        n.RECEIPT_SIG_ALG: receipt.signature.alg,
        n.RECEIPT_SIG_KEY_ID: receipt.signature.key_id,
        n.RECEIPT_SIG_VALUE: receipt.signature.value,
        n.OUTCOME: receipt.outcome,
        n.STOP_REASON: receipt.reason,
        "streamguard.tokens.produced": tokens.produced,
        "streamguard.tokens.committed": tokens.committed,
        "streamguard.tokens.consumed": tokens.consumed,
        "streamguard.tokens.undelivered": tokens.undelivered,
        "streamguard.tokens.post_cutoff": tokens.post_cutoff,
        "streamguard.tokens.prevented_estimate": tokens.prevented_estimate,
    }
