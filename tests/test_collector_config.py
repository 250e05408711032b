"""The Collector configs in collector-config/, checked structurally (no otelcol binary here).

Every pipeline names components that are defined; the OTLP exporters carry their current names
(otlp_grpc/otlp_http); memory_limiter is first in every pipeline; batching is done by the
exporters' sending_queue, not by the batch processor; Loki is reached at its native /otlp
endpoint; Grafana Cloud credentials come from the environment. The compose file mounts the
dashboards that the provisioning file points at.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "collector-config"
COLLECTORS = ["otelcol.yaml", "otelcol-grafana-cloud.yaml"]
SECTIONS = {"receivers", "processors", "exporters", "connectors"}
DEPRECATED = {"otlp": "otlp_grpc", "otlphttp": "otlp_http", "logging": "debug", "loki": "otlp_http"}
ENV = re.compile(r"^\$\{env:([A-Z_][A-Z0-9_]*)(?::-(.*))?\}$")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / name).read_text())
    assert isinstance(data, dict)
    return data


def kind(component_id: str) -> str:
    """``otlp_http/loki`` -> ``otlp_http`` (the component type; the rest is its name)."""
    return component_id.split("/", 1)[0]


def env_default(value: str) -> tuple[str, str | None]:
    match = ENV.match(value)
    assert match, f"{value!r} is not a ${{env:VAR}} or ${{env:VAR:-default}} reference"
    return match.group(1), match.group(2)


@pytest.mark.parametrize("name", COLLECTORS)
def test_every_pipeline_component_is_defined(name: str) -> None:
    config = load(name)
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for signal, pipeline in pipelines.items():
        assert pipeline["receivers"] and pipeline["exporters"], signal
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                defined = config.get(section) or {}
                assert component in defined, f"{name}: {signal} uses undefined {component}"
    for extension in config["service"].get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"{name}: undefined {extension}"
    # And nothing is defined that no pipeline uses (a typo would hide there).
    used = {c for p in pipelines.values() for s in SECTIONS for c in p.get(s, [])}
    defined = {c for s in SECTIONS for c in (config.get(s) or {})}
    assert defined == used


@pytest.mark.parametrize("name", COLLECTORS)
def test_exporters_use_the_current_otlp_names(name: str) -> None:
    exporters = load(name)["exporters"]
    for exporter in exporters:
        assert kind(exporter) not in DEPRECATED, (
            f"{exporter}: use {DEPRECATED[kind(exporter)]} instead"
        )
        assert kind(exporter) in {"otlp_grpc", "otlp_http"}, f"{exporter}: OTLP everywhere"


@pytest.mark.parametrize("name", COLLECTORS)
def test_memory_limiter_comes_first_in_every_pipeline(name: str) -> None:
    config = load(name)
    for signal, pipeline in config["service"]["pipelines"].items():
        assert pipeline["processors"][0] == "memory_limiter", signal
    limiter = config["processors"]["memory_limiter"]
    assert limiter["check_interval"]
    assert 0 < limiter["spike_limit_percentage"] < limiter["limit_percentage"] <= 90


@pytest.mark.parametrize("name", COLLECTORS)
def test_batching_is_done_by_the_exporters_not_the_batch_processor(name: str) -> None:
    config = load(name)
    assert not any(kind(p) == "batch" for p in config["processors"])
    for exporter, settings in config["exporters"].items():
        queue = settings["sending_queue"]
        batch = queue["batch"]
        assert queue["enabled"] is True, exporter
        # The collector accepts batching only with an items (or bytes) sized queue that can
        # hold at least one minimum batch.
        assert queue["sizer"] in {"items", "bytes"}, exporter
        assert 0 < batch["min_size"] <= batch["max_size"] <= queue["queue_size"], exporter
        assert re.fullmatch(r"\d+(ms|s)", batch["flush_timeout"]), exporter
        assert settings["retry_on_failure"]["enabled"] is True, exporter


def test_self_hosted_config_sends_each_signal_to_its_backend_over_otlp() -> None:
    config = load("otelcol.yaml")
    exporters = config["exporters"]
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp_grpc/tempo"]
    assert pipelines["logs"]["exporters"] == ["otlp_http/loki"]
    assert pipelines["metrics"]["exporters"] == ["otlp_http/prometheus"]
    variable, loki = env_default(exporters["otlp_http/loki"]["endpoint"])
    assert (variable, loki) == ("LOKI_OTLP_ENDPOINT", "http://loki:3100/otlp")
    assert loki is not None and loki.endswith("/otlp")  # Loki's native OTLP endpoint
    _, prometheus = env_default(exporters["otlp_http/prometheus"]["endpoint"])
    assert prometheus is not None and prometheus.endswith("/api/v1/otlp")
    _, tempo = env_default(exporters["otlp_grpc/tempo"]["endpoint"])
    assert tempo == "tempo:4317"
    assert exporters["otlp_grpc/tempo"]["tls"] == {"insecure": True}
    assert config["receivers"]["otlp"]["protocols"] == {
        "grpc": {"endpoint": "0.0.0.0:4317"},
        "http": {"endpoint": "0.0.0.0:4318"},
    }


def test_grafana_cloud_config_takes_basic_auth_from_the_environment() -> None:
    config = load("otelcol-grafana-cloud.yaml")
    (exporter,) = config["exporters"].values()
    authenticator = exporter["auth"]["authenticator"]
    assert kind(authenticator) == "basicauth"
    assert authenticator in config["service"]["extensions"]
    auth = config["extensions"][authenticator]["client_auth"]
    assert env_default(auth["username"]) == ("GRAFANA_CLOUD_INSTANCE_ID", None)
    assert env_default(auth["password"]) == ("GRAFANA_CLOUD_API_TOKEN", None)
    assert env_default(exporter["endpoint"]) == ("GRAFANA_CLOUD_OTLP_ENDPOINT", None)
    text = (CONFIGS / "otelcol-grafana-cloud.yaml").read_text()
    assert "glc_" not in text.replace("GRAFANA_CLOUD_API_TOKEN=glc_...", "")


def test_compose_provisions_the_generated_dashboards() -> None:
    compose = load("docker-compose.yaml")
    lgtm = compose["services"]["lgtm"]
    assert "grafana/otel-lgtm" in lgtm["image"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in lgtm["volumes"])
    provider_file = mounts["./grafana/dashboards.yaml"]
    assert provider_file.startswith("/otel-lgtm/grafana/conf/provisioning/dashboards/")
    provisioning = load("grafana/dashboards.yaml")
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    assert mounts["../dashboards"] == provider["options"]["path"]
    assert sorted(p.name for p in (CONFIGS / "../dashboards").glob("*.json")) == [
        "streamguard-overview.json",
        "streamguard-receipts.json",
    ]
    collector = compose["services"]["collector"]
    assert "./otelcol.yaml:/etc/otelcol/otelcol.yaml:ro" in collector["volumes"]
    assert collector["environment"]["LOKI_OTLP_ENDPOINT"].endswith("/otlp")
