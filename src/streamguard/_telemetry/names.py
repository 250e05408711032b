"""Every OTel name StreamGuard emits (DESIGN section 6). The dashboards depend on these."""

from __future__ import annotations

# Span and log attributes (GenAI semantic conventions, then StreamGuard's own).
PROVIDER = "gen_ai.provider.name"
OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_STREAM = "gen_ai.request.stream"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT = "gen_ai.usage.input_tokens"
USAGE_OUTPUT = "gen_ai.usage.output_tokens"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
TOKEN_TYPE = "gen_ai.token.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
OUTCOME = "streamguard.outcome"
STOP_REASON = "streamguard.stop.reason"
STOP_CATEGORY = "streamguard.stop.category"
STREAM_ID = "streamguard.stream.id"
KIND = "streamguard.kind"
RESULT = "streamguard.result"
LATER_SIGNALS = "streamguard.stop.later_signals"
BUDGET = "streamguard.budget"
DRIFT_DIRECTION = "streamguard.drift.direction"

# The receipt on the span event and the log record.
RECEIPT_EVENT = "streamguard.receipt"
RECEIPT_ID = "streamguard.receipt.id"
RECEIPT_SEQ = "streamguard.receipt.seq"
RECEIPT_HASH = "streamguard.receipt.hash"
RECEIPT_JSON = "streamguard.receipt.json"
RECEIPT_SIG_ALG = "streamguard.receipt.signature.alg"
RECEIPT_SIG_KEY_ID = "streamguard.receipt.signature.key_id"
RECEIPT_SIG_VALUE = "streamguard.receipt.signature.value"
EVENT_ATTR = "streamguard.event"

# Metric instruments: (name, unit, description).
TOKEN_USAGE = ("gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.")
OPERATION_DURATION = (
    "gen_ai.client.operation.duration",
    "s",
    "GenAI operation duration, from the request to the end of the stream.",
)
TTFC = (
    "gen_ai.client.operation.time_to_first_chunk",
    "s",
    "Time from the request to the first chunk of model output.",
)
STREAMS = ("streamguard.streams", "{stream}", "Streams finished, by outcome and stop reason.")
STREAMS_ACTIVE = ("streamguard.streams.active", "{stream}", "Streams open right now.")
TOKENS = (
    "streamguard.tokens",
    "{token}",
    "Tokens by kind: input, produced, consumed, undelivered, post_cutoff, prevented.",
)
COST = ("streamguard.cost", "USD", "Cost in US dollars by kind: spent, undelivered, prevented.")
STOP_LATENCY = (
    "streamguard.stop.latency",
    "s",
    "Time from the stop signal to the upstream connection being closed.",
)
RECEIPTS = ("streamguard.receipts", "{receipt}", "Receipts finalised, by result.")
BUDGET_STORE_ERRORS = (
    "streamguard.budget.store_errors",
    "{error}",
    "Budget store (Redis) failures, by budget and whether the budget failed open or closed.",
)
ESTIMATE_DRIFT = (
    "streamguard.estimate.drift",
    "{token}",
    "How far the output-token estimate was from the provider's count, per stream with exact "
    "usage; the direction attribute says over, under or exact.",
)

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STOP_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
DRIFT_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
