"""The "StreamGuard overview" dashboard: Prometheus metrics of DESIGN section 6."""

from __future__ import annotations

from typing import Any

from dashboards._common import (
    ACTIVE,
    COST,
    DURATION,
    PROM,
    RECEIPTS,
    SEL,
    STOP_LATENCY,
    STREAMS,
    TOKENS,
    TTFC,
    bargauge,
    cb,
    cm,
    dashboard_links,
    datasource_variable,
    db,
    dm,
    prom,
    quantiles,
    series,
    stat_panel,
)


def _by(label: str, fn: str, metric: str, selector: str, window: str, scale: str = "") -> Any:
    """``sum by (label) (fn(metric{selector}[window]))``, legend ``{{label}}``."""
    series_ = f"{metric}{{{selector}}}" if selector else metric
    expr = f"sum by ({label}) ({fn}({series_}[{window}])){scale}"
    return prom(expr, "{{" + label + "}}")


RATE = "$__rate_interval"
SPENT = f'streamguard_kind="spent", {SEL}'
REJECTED = f'streamguard_outcome="rejected", {SEL}'
ACTIVE_SEL = 'gen_ai_provider_name=~"$provider"'

# (title, expression, unit, description): stat panels over the dashboard's time range.
STATS = (
    (
        "Spend",
        f"sum(increase({COST}{{{SPENT}}}[$__range]))",
        "currencyUSD",
        "Input + output cost of every stream.",
    ),
    (
        "Prevented spend",
        f'sum(increase({COST}{{streamguard_kind="prevented", {SEL}}}[$__range]))',
        "currencyUSD",
        "Estimated cost of the output the upstream would still have generated had StreamGuard "
        "not closed the stream.",
    ),
    (
        "Undelivered spend",
        f'sum(increase({COST}{{streamguard_kind="undelivered", {SEL}}}[$__range]))',
        "currencyUSD",
        "Cost of tokens produced and paid for that never reached the user.",
    ),
    (
        "Budget rejections",
        f"sum(increase({STREAMS}{{{REJECTED}}}[$__range]))",
        "short",
        "Streams rejected before any request because a budget had run out (outcome rejected).",
    ),
    # No series exists until a receipt fails, so "No data" would look like a fault: say 0.
    (
        "Receipt failures",
        f'sum(increase({RECEIPTS}{{streamguard_result="failed"}}[$__range])) or vector(0)',
        "short",
        "Streams whose receipt could not be sealed. Should stay 0.",
    ),
    ("Active streams", f"sum({ACTIVE}{{{ACTIVE_SEL}}})", "short", "Streams open right now."),
)


def _variable(name: str, label: str, query: str) -> Any:
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(PROM)
        .query(query)
        .definition(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def overview() -> Any:
    """Spend, prevented and undelivered spend, tokens, streams, latency, receipts."""
    models = f"label_values({STREAMS}{{{ACTIVE_SEL}}}, gen_ai_request_model)"
    dash = (
        db.Dashboard("StreamGuard overview")
        .uid("streamguard-overview")
        .description("LLM streams guarded by StreamGuard: spend, bleed prevented, latency.")
        .tags(["streamguard", "genai"])
        .editable()
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .links(dashboard_links())
        .with_variable(datasource_variable("prometheus_datasource", "Prometheus", "prometheus"))
        .with_variable(
            _variable("provider", "Provider", f"label_values({STREAMS}, gen_ai_provider_name)")
        )
        .with_variable(_variable("model", "Model", models))
        .with_row(db.Row("In the time range").id(100))
    )
    for pid, (title, expr, unit, description) in enumerate(STATS, 1):
        dash = dash.with_panel(stat_panel(pid, title, expr, unit, description))
    reasons = (
        bargauge.Panel()
        .id(12)
        .title("Streams by stop reason")
        .description("Streams finished in the time range, by the first stop signal.")
        .datasource(PROM)
        .unit("short")
        .span(12)
        .height(8)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(
            prom(
                f"sum by (streamguard_stop_reason) (increase({STREAMS}{{{SEL}}}[$__range]))",
                "{{streamguard_stop_reason}}",
                instant=True,
            )
        )
    )
    return (
        dash.with_row(db.Row("Spend and tokens").id(101))
        .with_panel(
            series(
                7,
                "Spend by kind",
                "USD per hour: spent, undelivered, prevented.",
                "currencyUSD",
                _by("streamguard_kind", "rate", COST, SEL, RATE, " * 3600"),
            )
        )
        .with_panel(
            series(
                8,
                "Spend by model",
                "USD per hour spent, by model.",
                "currencyUSD",
                _by("gen_ai_request_model", "rate", COST, SPENT, RATE, " * 3600"),
            )
        )
        .with_panel(
            series(
                9,
                "Tokens by kind",
                "Tokens per second: input, produced, consumed, "
                "undelivered, post_cutoff, prevented.",
                "short",
                _by("streamguard_kind", "rate", TOKENS, SEL, RATE),
            )
        )
        .with_panel(
            series(
                10,
                "Active streams",
                "Streams open right now, by provider.",
                "short",
                prom(
                    f"sum by (gen_ai_provider_name) ({ACTIVE}{{{ACTIVE_SEL}}})",
                    "{{gen_ai_provider_name}}",
                ),
            )
        )
        .with_row(db.Row("Streams and receipts").id(102))
        .with_panel(
            series(
                11,
                "Streams by outcome",
                "Streams finished per second, by outcome.",
                "short",
                _by("streamguard_outcome", "rate", STREAMS, SEL, RATE),
            )
        )
        .with_panel(reasons)
        .with_panel(
            series(
                13,
                "Budget rejections",
                "Streams rejected by a budget, by model.",
                "short",
                _by("gen_ai_request_model", "increase", STREAMS, REJECTED, RATE),
            )
        )
        .with_panel(
            series(
                14,
                "Receipts by result",
                "Receipts finalised per second: emitted, failed.",
                "short",
                _by("streamguard_result", "rate", RECEIPTS, "", RATE),
            )
        )
        .with_row(db.Row("Latency").id(103))
        .with_panel(
            series(
                15,
                "Stop latency p50 / p99",
                "Stop signal to upstream connection closed (completed streams excluded).",
                "s",
                *quantiles(STOP_LATENCY, 'streamguard_stop_reason!="completed"'),
                w=8,
            )
        )
        .with_panel(
            series(
                16,
                "Time to first chunk p50 / p99",
                "Request to first chunk of output.",
                "s",
                *quantiles(TTFC, SEL),
                w=8,
            )
        )
        .with_panel(
            series(
                17,
                "Operation duration p50 / p99",
                "Request to end of stream.",
                "s",
                *quantiles(DURATION, SEL),
                w=8,
            )
        )
    )
