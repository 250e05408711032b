"""The "StreamGuard receipts" dashboard: receipts in Loki, filterable, linked to traces."""

from __future__ import annotations

from typing import Any

from dashboards._common import (
    LOKI,
    cb,
    cm,
    dashboard_links,
    datasource_variable,
    db,
    dm,
    logs,
    loki,
    stat,
    table,
    timeseries,
)
from streamguard._engine.reasons import Outcome, StopReason

# Loki's native OTLP endpoint stores log attributes as structured metadata with dots turned
# into underscores; streamguard.event="receipt" is there for backends that drop event_name.
SELECTOR = '{service_name=~"$service"}'
FILTERS = (
    '| streamguard_event="receipt" | streamguard_outcome=~"$outcome" '
    '| streamguard_stop_reason=~"$reason" | gen_ai_request_model=~"$model"'
)
RECEIPT_LOGS = f"{SELECTOR} {FILTERS}"

TRACE_URL = (
    '/explore?schemaVersion=1&panes={"trace":{"datasource":"${tempo_datasource}","queries":'
    '[{"refId":"A","datasource":{"type":"tempo","uid":"${tempo_datasource}"},'
    '"queryType":"traceql","query":"${__value.raw}"}],"range":{"from":"now-24h","to":"now"}}}'
)
TABLE_COLUMNS = (
    "Time",
    "receipt_id",
    "provider",
    "model",
    "outcome",
    "reason",
    "tokens_produced",
    "tokens_consumed",
    "tokens_undelivered",
    "tokens_prevented_estimate",
    "cost_input",
    "cost_output",
    "cost_undelivered",
    "cost_prevented_estimate",
    "trace_id",
)


def _loki(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Any:
    query = loki.Dataquery().expr(expr).ref_id(ref).datasource(LOKI)
    if legend:
        query = query.legend_format(legend)
    return query.instant(True) if instant else query.range(True)


def _choice(name: str, label: str, values: list[str]) -> Any:
    return (
        db.CustomVariable(name)
        .label(label)
        .values(",".join(values))
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def _textbox(name: str, label: str, default: str, description: str) -> Any:
    return (
        db.TextBoxVariable(name)
        .label(label)
        .description(description)
        .default_value(default)
        .current(dm.VariableOption(selected=True, text=default, value=default))
    )


def receipts() -> Any:
    """Receipts from Loki, filterable by outcome, reason and model, each linked to its trace."""
    count = f"sum by (streamguard_outcome) (count_over_time({RECEIPT_LOGS} [$__interval]))"
    by_reason = f"sum by (streamguard_stop_reason) (count_over_time({RECEIPT_LOGS} [$__interval]))"
    undelivered = (
        f'sum(sum_over_time({RECEIPT_LOGS} | json undelivered="tokens.undelivered" '
        '| unwrap undelivered | __error__="" [$__range]))'
    )
    trace_link = db.DashboardLink("Open trace").url(TRACE_URL).target_blank(True)
    return (
        db.Dashboard("StreamGuard receipts")
        .uid("streamguard-receipts")
        .description("Signed per-stream receipts from Loki, each linked to its trace in Tempo.")
        .tags(["streamguard", "genai"])
        .editable()
        .time("now-6h", "now")
        .refresh("30s")
        .links(dashboard_links())
        .with_variable(datasource_variable("loki_datasource", "Loki", "loki"))
        .with_variable(datasource_variable("tempo_datasource", "Tempo", "tempo"))
        .with_variable(
            _textbox("service", "Service", ".+", "Regex on service_name (OTel service.name).")
        )
        .with_variable(_choice("outcome", "Outcome", [str(o) for o in Outcome]))
        .with_variable(_choice("reason", "Stop reason", [str(r) for r in StopReason]))
        .with_variable(_textbox("model", "Model", ".*", "Regex on the requested model."))
        .with_panel(
            timeseries.Panel()
            .id(1)
            .title("Receipts by outcome")
            .datasource(LOKI)
            .span(8)
            .height(7)
            .draw_style(cm.GraphDrawStyle.BARS)
            .fill_opacity(60)
            .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
            .with_target(_loki(count, "{{streamguard_outcome}}"))
        )
        .with_panel(
            timeseries.Panel()
            .id(2)
            .title("Receipts by stop reason")
            .datasource(LOKI)
            .span(8)
            .height(7)
            .draw_style(cm.GraphDrawStyle.BARS)
            .fill_opacity(60)
            .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
            .with_target(_loki(by_reason, "{{streamguard_stop_reason}}"))
        )
        .with_panel(
            stat.Panel()
            .id(3)
            .title("Undelivered tokens")
            .description("Tokens produced and paid for that never reached the user.")
            .datasource(LOKI)
            .span(8)
            .height(7)
            .graph_mode(cm.BigValueGraphMode.NONE)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
            .with_target(_loki(undelivered, instant=True))
        )
        .with_panel(
            table.Panel()
            .id(4)
            .title("Receipts")
            .description("One row per receipt; the trace id opens the stream's trace in Tempo.")
            .datasource(LOKI)
            .span(24)
            .height(12)
            .with_target(_loki(f"{RECEIPT_LOGS} | json", instant=False))
            .with_transformation(
                dm.DataTransformerConfig(id_val="extractFields", options={"source": "labels"})
            )
            .with_transformation(
                dm.DataTransformerConfig(
                    id_val="organize",
                    options={
                        "includeByName": dict.fromkeys(TABLE_COLUMNS, True),
                        "indexByName": {name: i for i, name in enumerate(TABLE_COLUMNS)},
                    },
                )
            )
            .override_by_name(
                "trace_id", [dm.DynamicConfigValue(id_val="links", value=[trace_link.build()])]
            )
        )
        .with_panel(
            logs.Panel()
            .id(5)
            .title("Receipt records")
            .description("The raw receipts as Loki stores them (the receipt is the log body).")
            .datasource(LOKI)
            .span(24)
            .height(12)
            .show_time(True)
            .wrap_log_message(True)
            .prettify_log_message(False)
            .enable_log_details(True)
            .sort_order(cm.LogsSortOrder.DESCENDING)
            .with_target(_loki(RECEIPT_LOGS))
        )
    )
