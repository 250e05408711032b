"""The bundled Grafana dashboards: generated, parseable, and fed by the metrics the SDK emits.

- The committed JSON is what dashboards/generate.py writes.
- Every query reaches its data source through a template variable.
- Every PromQL expression parses with promtool once Grafana's macros are substituted.
- End to end: instrumented traffic (openai, anthropic, ollama; completed, cancelled, rejected
  by a budget) exposed by the SDK's Prometheus exporter and scraped by a real Prometheus; every
  dashboard query returns data and every metric it names exists.
- The receipts dashboard filters on attributes the receipt log record really carries.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import _free_port
from streamguard import GuardedIterator

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
TRAFFIC = Path(__file__).with_name("_otel_traffic.py")
MACROS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m"}
ALL = {"$provider": ".*", "$model": ".*"}
USED = {"$provider": "openai", "$model": "gpt-4o"}
REQUIRED_OVERVIEW = {
    "Spend",
    "Prevented spend",
    "Undelivered spend",
    "Tokens by kind",
    "Streams by outcome",
    "Streams by stop reason",
    "Active streams",
    "Stop latency p50 / p99",
    "Time to first chunk p50 / p99",
    "Budget rejections",
    "Receipt failures",
}


def load(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def prom_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every Prometheus query."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if panel["datasource"]["type"] == "prometheus"
    ]


def variable_selectors(dashboard: dict[str, Any]) -> list[str]:
    """The series selectors inside the ``label_values(selector, label)`` query variables."""
    found = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
            assert match, var["query"]
            found.append(match.group(1))
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in {**MACROS, **variables}.items():
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: `make system-deps` installs Debian's prometheus")
        pytest.skip(f"{name} is not installed: run `make system-deps` (Debian prometheus)")
    return path


OVERVIEW = load("streamguard-overview.json")
RECEIPTS = load("streamguard-receipts.json")


# ----------------------------------------------------------------------------- generation
def test_committed_json_is_what_the_generator_writes() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from dashboards.generate import render, stale
    finally:
        sys.path.remove(str(ROOT))
    assert sorted(render()) == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert stale() == [], "run `make dashboards` and commit the JSON"


def test_overview_has_every_panel_the_issue_asks_for() -> None:
    titles = {panel["title"] for panel in panels(OVERVIEW)}
    assert titles >= REQUIRED_OVERVIEW
    ids = [panel["id"] for panel in panels(OVERVIEW)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("dashboard", [OVERVIEW, RECEIPTS], ids=["overview", "receipts"])
def test_every_query_uses_a_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {
        var["name"]: var["query"]
        for var in dashboard["templating"]["list"]
        if var["type"] == "datasource"
    }
    refs = [p["datasource"] for p in panels(dashboard) if p["type"] != "row"]
    refs += [t["datasource"] for p in panels(dashboard) for t in p.get("targets", [])]
    refs += [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
    assert refs
    for ref in refs:
        match = re.fullmatch(r"\$\{(\w+)\}", ref["uid"])
        assert match, f"fixed data source uid {ref['uid']!r}: import would break"
        assert variables[match.group(1)] == ref["type"]


# ----------------------------------------------------------------------------- promtool
def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"streamguard:dashboard_query_{i}", "expr": expr}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    return subprocess.run(
        [binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_every_promql_expression_parses_with_promtool(tmp_path: Path) -> None:
    exprs = [substitute(expr, ALL) for _, expr in prom_queries(OVERVIEW)]
    exprs += [substitute(sel, ALL) for sel in variable_selectors(OVERVIEW)]
    assert len(exprs) >= 20
    result = promtool_check(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
    # The check can fail: a broken expression is reported.
    broken = promtool_check(["sum(rate(streamguard_streams_total[1m])"], tmp_path)
    assert broken.returncode != 0


# ----------------------------------------------------------------------------- receipts
def test_receipts_dashboard_filters_on_attributes_the_log_record_carries(runtime, otel) -> None:
    g = GuardedIterator(iter(["a", "b"]), provider="openai", model="gpt-4o", max_tokens=5)
    next(g)
    g.close()
    runtime.shutdown(timeout=2.0)
    (log,) = otel.logs.get_finished_logs()
    # Loki's OTLP endpoint keeps attributes as structured metadata, dots turned to underscores.
    metadata = {key.replace(".", "_") for key in (log.log_record.attributes or {})}
    metadata |= {"service_name", "trace_id", "span_id"}  # index label and OTLP record fields
    metadata.add("__error__")  # LogQL's own label for a parse or unwrap failure
    body_keys = set(log.log_record.body)  # type: ignore[arg-type]
    for _, target in [(p, t) for p in panels(RECEIPTS) for t in p.get("targets", [])]:
        expr = target["expr"]
        assert '| streamguard_event="receipt"' in expr
        for variable in ("$outcome", "$reason", "$model", "$service"):
            assert variable in expr
        for label in re.findall(r"[|{,]\s*(\w+)\s*=~?", expr):
            assert label in metadata, f"{label} is not on the receipt log record"
        for field in re.findall(r'\w+="(\w+)\.\w+"', expr):  # | json x="tokens.undelivered"
            assert field in body_keys
    variables = {v["name"]: v for v in RECEIPTS["templating"]["list"]}
    assert variables["outcome"]["query"] == "completed,cancelled,failed,rejected"
    assert "budget_exceeded" in variables["reason"]["query"].split(",")
    (table,) = [p for p in panels(RECEIPTS) if p["type"] == "table"]
    (override,) = table["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byName", "options": "trace_id"}
    (link,) = override["properties"][0]["value"]
    assert "${tempo_datasource}" in link["url"] and "${__value.raw}" in link["url"]


# ----------------------------------------------------------------------------- end to end
class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=5)

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.http.get("/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def total(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def wait_until(self, expr: str, value: float, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.total(expr) != value:
            assert time.monotonic() < deadline, f"{expr} never reached {value}"
            time.sleep(0.2)


@pytest.fixture
def traffic() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = _free_port()
    env = {**os.environ, "STREAMGUARD_SIGNING_KEY": "22" * 32, "STREAMGUARD_KEY_ID": "e2e"}
    proc = subprocess.Popen(
        [sys.executable, str(TRAFFIC), "prometheus", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@pytest.fixture
def prometheus(traffic, tmp_path) -> Iterator[Prometheus]:
    exe = binary("prometheus")
    _, target = traffic
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "streamguard",
                        "static_configs": [{"targets": [f"127.0.0.1:{target}"]}],
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    while True:
        try:
            if prom.http.get("/-/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.1)
    yield prom
    prom.http.close()
    proc.terminate()
    proc.communicate(timeout=10)


def read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == marker:
            return lines
        lines.append(line)
    raise AssertionError(f"traffic ended before {marker!r}: {lines}")


@pytest.mark.timeout(90)
def test_every_dashboard_query_returns_data_from_a_real_prometheus(traffic, prometheus) -> None:
    proc, _ = traffic
    (first,) = read_until(proc, "ready")
    assert json.loads(first)["budget"] == "BudgetExceeded"
    streams = "sum(streamguard_streams_total)"
    prometheus.wait_until(streams, 7)  # the first wave, scraped
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    read_until(proc, "done")
    prometheus.wait_until(streams, 14)  # the second wave: every counter has moved
    time.sleep(1.2)  # one more scrape, so each range holds the second wave twice

    names = set(prometheus.http.get("/api/v1/label/__name__/values").json()["data"])
    for variables in (ALL, USED):
        for title, expr in prom_queries(OVERVIEW):
            query = substitute(expr, variables)
            result = prometheus.query(query)
            assert result, f"{title}: no data for {query}"
            values = [float(r["value"][1]) for r in result]
            assert any(math.isfinite(v) for v in values), f"{title}: {query} -> {values}"
            for name in re.findall(r"([a-zA-Z_:][\w:]*)[{\[]", expr):  # metric{...} or metric[..]
                assert name in names, f"{title}: {name} is not a series the SDK exports"
        for selector in variable_selectors(OVERVIEW):
            assert prometheus.query(substitute(selector, variables))
    # The money really moved between the two scrapes, in every kind the dashboard shows.
    spent = "sum by (streamguard_kind) (increase(streamguard_cost_USD_total[5m]))"
    kinds = {r["metric"]["streamguard_kind"]: float(r["value"][1]) for r in prometheus.query(spent)}
    assert set(kinds) == {"spent", "undelivered", "prevented"}
    assert all(v > 0 for v in kinds.values())
