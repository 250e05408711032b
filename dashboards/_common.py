"""What both dashboards share: the SDK imports, metric names, data sources, panel helpers.

The SDK's classic-dashboard modules warn at import time that they prefer the v2 model; the
classic model is used on purpose (file provisioning and the import dialog of every current
Grafana accept it), so they are imported here, once, with that warning silenced.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = [
    "ACTIVE",
    "COST",
    "DURATION",
    "LOKI",
    "PROM",
    "RECEIPTS",
    "SEL",
    "STOP_LATENCY",
    "STREAMS",
    "TOKENS",
    "TTFC",
    "JSONEncoder",
    "bargauge",
    "cb",
    "cm",
    "dashboard_links",
    "datasource_variable",
    "db",
    "dm",
    "logs",
    "loki",
    "prom",
    "quantiles",
    "series",
    "stat",
    "stat_panel",
    "table",
    "timeseries",
]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import (
        bargauge,
        logs,
        loki,
        prometheus,
        stat,
        table,
        timeseries,
    )
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm

# --- Prometheus series (names verified by scraping the SDK's Prometheus exporter) ----------
COST = "streamguard_cost_USD_total"  # streamguard.cost, counter, unit USD
TOKENS = "streamguard_tokens_total"  # streamguard.tokens, counter, {token}
STREAMS = "streamguard_streams_total"  # streamguard.streams, counter, {stream}
ACTIVE = "streamguard_streams_active"  # streamguard.streams.active, up-down counter
RECEIPTS = "streamguard_receipts_total"  # streamguard.receipts, counter, {receipt}
STOP_LATENCY = "streamguard_stop_latency_seconds_bucket"  # histogram, s
TTFC = "gen_ai_client_operation_time_to_first_chunk_seconds_bucket"  # histogram, s
DURATION = "gen_ai_client_operation_duration_seconds_bucket"  # histogram, s

PROM = cm.DataSourceRef(type_val="prometheus", uid="${prometheus_datasource}")
LOKI = cm.DataSourceRef(type_val="loki", uid="${loki_datasource}")
SEL = 'gen_ai_provider_name=~"$provider", gen_ai_request_model=~"$model"'

# --- helpers ------------------------------------------------------------------------------


def prom(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Any:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(PROM)
    if legend:
        query = query.legend_format(legend)
    return query.instant() if instant else query.range()


def stat_panel(pid: int, title: str, expr: str, unit: str, description: str) -> Any:
    return (
        stat.Panel()
        .id(pid)
        .title(title)
        .description(description)
        .datasource(PROM)
        .unit(unit)
        .span(4)
        .height(4)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(prom(expr, instant=True))
    )


def series(pid: int, title: str, description: str, unit: str, *targets: Any, w: int = 12) -> Any:
    panel = (
        timeseries.Panel()
        .id(pid)
        .title(title)
        .description(description)
        .datasource(PROM)
        .unit(unit)
        .span(w)
        .height(8)
        .fill_opacity(10)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
        )
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def quantiles(metric: str, selector: str) -> list[Any]:
    """p50 and p99 of a histogram's ``_bucket`` series, over ``$__rate_interval``."""
    rate = f"rate({metric}{{{selector}}}[$__rate_interval])"
    return [
        prom(f"histogram_quantile({q}, sum by (le) ({rate}))", legend, ref)
        for q, legend, ref in ((0.5, "p50", "A"), (0.99, "p99", "B"))
    ]


def dashboard_links() -> list[Any]:
    return [
        db.DashboardLink("StreamGuard")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(["streamguard"])
        .as_dropdown(False)
        .include_vars(False)
        .keep_time(True)
    ]


def datasource_variable(name: str, label: str, kind: str) -> Any:
    return db.DatasourceVariable(name).label(label).type(kind)
