"""What a stream cost and saved: the receipt's token, cost and time fields from a core.

Exact usage replaces the estimate (the not-yet-handed-over and not-yet-consumed shares keep
their estimated sizes); the prevented estimate follows each provider's billing rule; costs
are decimal strings from the runtime's prices, null when the model has no known price.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from streamguard._engine.reasons import StopReason
from streamguard._money.pricing import money
from streamguard._receipts.ids import new_id
from streamguard._receipts.model import Costs, Times, Tokens

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore
    from streamguard._money.estimate import LengthModel
    from streamguard._money.pricing import Pricing

__all__ = [
    "BILLING",
    "RUNS_ON_SERVER",
    "STOPS_ON_ABORT",
    "WHOLE_COMPLETION",
    "billing_rule",
    "receipt_fields",
]

_UNPRICED = Costs(
    currency="USD",
    input=None,
    output=None,
    undelivered=None,
    prevented_estimate=None,
    pricing_source="unknown",
)
STOPS_ON_ABORT = "stops_on_abort"
WHOLE_COMPLETION = "whole_completion"
#: The generation belongs to a server-side object (an Assistants run, an agent session) that
#: goes on when the stream's connection closes: closing the stream prevents nothing.
RUNS_ON_SERVER = "runs_on_server"
_RULES = frozenset({STOPS_ON_ABORT, WHOLE_COMPLETION, RUNS_ON_SERVER})
# How each provider bills a stream that is cut: every provider here stops generating, and
# billing, when the connection closes (ollama is local and bills nothing). A gateway that
# bills the whole completion is configured with instrument(billing={"name": "whole_completion"}).
BILLING = {
    "openai": STOPS_ON_ABORT,
    "anthropic": STOPS_ON_ABORT,
    "ollama": STOPS_ON_ABORT,
    "gcp.gemini": STOPS_ON_ABORT,
    "mistral_ai": STOPS_ON_ABORT,
    # "provider/operation" keys win over the provider's own rule.
    "openai/invoke_agent": RUNS_ON_SERVER,
    "anthropic/invoke_agent": RUNS_ON_SERVER,
}


def billing_rule(billing: Mapping[str, str], core: StreamCore) -> str:
    """How ``core``'s stream is billed when cut: the stream's own rule where its request
    decided it (a provider layer sets the ``billing`` attribute: an openai background response
    runs on the server), else its operation's rule, else its provider's."""
    own = core.attributes.get("billing")
    if own in _RULES:
        return str(own)
    rule = billing.get(f"{core.provider}/{core.operation}")
    return rule if rule is not None else billing.get(core.provider, STOPS_ON_ABORT)


def receipt_fields(
    core: StreamCore,
    *,
    pricing: Pricing,
    lengths: LengthModel,
    billing: Mapping[str, str],
    span_ids: tuple[str | None, str | None],
) -> dict[str, Any]:
    """Every receipt field the engine knows for ``core``; the ledger adds the chain fields.

    ``span_ids`` are the stream span's trace and span ids (the runtime asks telemetry)."""
    reason = core.stop_reason or StopReason.UPSTREAM_ERROR
    outcome = reason.outcome(rejected=core.rejected)
    est_produced = core.produced_tokens
    produced = est_produced if core.usage_exact is None else core.usage_exact
    # Exact usage replaces the estimate; the not-yet-handed-over and not-yet-consumed
    # shares keep their estimated sizes.
    committed = max(0, min(produced, produced - (est_produced - core.committed_tokens)))
    consumed = max(0, min(committed, committed - (core.committed_tokens - core.consumed_tokens)))
    if outcome == "completed":
        lengths.observe(core.model, produced)
        prevented = 0
    elif outcome == "failed":
        prevented = 0  # the upstream failed: it would not have generated more
    elif (rule := billing_rule(billing, core)) == WHOLE_COMPLETION:
        prevented = 0  # this provider bills the whole completion: nothing is prevented
    elif rule == RUNS_ON_SERVER:
        prevented = 0  # the run or session goes on without the connection
    else:
        expected = lengths.expected(core.model)
        if core.request_max_tokens is not None:
            expected = min(expected, core.request_max_tokens)
        prevented = max(0, expected - produced)
    undelivered = produced - consumed
    trace_id, span_id = span_ids
    return {
        "receipt_id": new_id(),
        "stream_id": core.stream_id,
        "provider": core.provider,
        "model": core.model,
        "operation": core.operation,
        "request_max_tokens": core.request_max_tokens,
        "outcome": str(outcome),
        "reason": str(reason),
        "category": None if reason.category is None else str(reason.category),
        "detail": core.detail,
        "tokens": Tokens(
            input=core.input_tokens,
            produced=produced,
            committed=committed,
            consumed=consumed,
            undelivered=undelivered,
            post_cutoff=core.post_cutoff_tokens,
            prevented_estimate=prevented,
            usage_source="provider" if core.usage_exact is not None else "estimated",
        ),
        "cost": _cost(pricing, core, produced, undelivered, prevented),
        "times": Times(
            started=core.t_started,
            first_chunk=core.t_first_chunk,
            stop_requested=core.t_stop_requested if reason != "completed" else None,
            upstream_closed=core.t_upstream_closed,
            finalized=time.time_ns(),
        ),
        "trace_id": trace_id,
        "span_id": span_id,
        "attributes": {
            **core.attributes,
            "billing": billing_rule(billing, core),
        },
    }


def _cost(
    pricing: Pricing, core: StreamCore, produced: int, undelivered: int, prevented: int
) -> Costs:
    price = pricing.price(core.provider, core.model)
    if price is None:
        return _UNPRICED
    cached = min(core.cached_input_tokens or 0, core.input_tokens or 0)
    input_cost = Decimal((core.input_tokens or 0) - cached) * price.input + Decimal(cached) * (
        price.cached_input if price.cached_input is not None else price.input
    )
    return Costs(
        currency="USD",
        input=money(input_cost),
        output=money(produced * price.output),
        undelivered=money(undelivered * price.output),
        prevented_estimate=money(prevented * price.output),
        pricing_source=price.source,
    )


# --------------------------------------------------------------------- shutdown
