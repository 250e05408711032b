"""7. Collector down: what an unreachable OTLP collector adds to the application's streams.

The application exports traces, logs and metrics over OTLP with ``streamguard.configure_otel()``
(the SDK's batch processors and periodic metric reader). Two conditions, each in a fresh child
process (OTel providers are global, one set per process):

- *up* (baseline): a live local receiver (``streamguard.testing.otlp_receiver``) accepts it all;
- *down*: the endpoint is a closed port on 127.0.0.1, so every export fails and is retried.

Each child opens ``N`` openai chat streams (sync, ``max_tokens=20``) against
``streamguard.testing.Upstream`` in its own process (token interval 0: the stream's own cost
dominates) and reports the wall time of each, then the time its providers take to shut down
(the final flush; bounded by ``OTEL_EXPORTER_OTLP_TIMEOUT=2``). To make exports, and failed
exports, happen during the streams rather than only at exit, the children export every 200 ms
(``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BLRP_SCHEDULE_DELAY``, the metric interval). Conditions
are interleaved (up down, down up, ...), for OTLP/HTTP and OTLP/gRPC.

Figures: per-stream wall time, down against up (median of per-child medians, paired ratio),
and the per-stream p50/p99 over all children; the exit flush is reported, not judged. No goal:
the point is the number (DESIGN section 7: numbers live here, never in test assertions).

    python -m benchmarks._worker collector_down --otel sdk --result /tmp/r.json [--quick]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from benchmarks._upstream_proc import RemoteUpstream

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS = ("http/protobuf", "grpc")
MODEL = "gpt-4o-mini"


def _child_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGUARD_", "OTEL_"))}
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
        }
    )
    return env


def _child(base_url: str, protocol: str, endpoint: str, n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.collector_down", base_url, protocol, str(n)],
        cwd=REPO,
        env=_child_env(endpoint),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"collector_down child failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def _dead_endpoint() -> str:
    with socket.socket() as s:  # bound, then released: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run() -> dict[str, Any]:
    from streamguard.testing.otlp_receiver import OTLPReceiver

    reps, n = (1, 40) if c.QUICK else (4, 200)
    figures: list[dict[str, Any]] = []
    flush: dict[str, dict[str, list[float]]] = {}
    with RemoteUpstream(token_interval=0.0).start() as up, OTLPReceiver() as rx:
        for protocol in PROTOCOLS:
            live = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
            endpoints = {"up": live, "down": _dead_endpoint()}
            streams: dict[str, list[float]] = {"up": [], "down": []}
            medians: dict[str, list[float]] = {"up": [], "down": []}
            flush[protocol] = {"up": [], "down": []}
            for rep in range(reps):
                for cond in ("up", "down") if rep % 2 == 0 else ("down", "up"):
                    result = _child(up.openai_base_url, protocol, endpoints[cond], n)
                    streams[cond] += result["stream_ms"]
                    medians[cond].append(c.median(result["stream_ms"]))
                    flush[protocol][cond].append(result["exit_flush_s"])
            label = "OTLP/gRPC" if protocol == "grpc" else "OTLP/HTTP"
            figures.append(
                c.figure(
                    f"collector_down_{protocol.split('/')[0]}_stream",
                    f"openai stream, collector down vs up ({label})",
                    "ms",
                    baseline_name="collector up",
                    baseline=medians["up"],
                    name="collector down",
                    values=medians["down"],
                    note=f"{n} streams per child, median per child; {reps} child(ren) each",
                )
            )
            figures.append(
                c.latency_figure(
                    f"collector_down_{protocol.split('/')[0]}_stream_dist",
                    f"openai stream wall time, all streams ({label})",
                    "ms",
                    baseline_name="collector up",
                    baseline=streams["up"],
                    name="collector down",
                    values=streams["down"],
                )
            )
    return {
        "figures": figures,
        "exit_flush_s": {
            p: {k: round(c.median(v), 3) for k, v in conds.items()} for p, conds in flush.items()
        },
    }


def _child_main(base_url: str, protocol: str, n: int) -> None:
    """In the child: configure OTLP, instrument, run ``n`` streams, report, shut down."""
    import openai

    import streamguard

    providers = streamguard.configure_otel(
        service_name="bench-collector-down", protocol=protocol, export_interval_s=0.2
    )
    streamguard.instrument(**c.instrument_kwargs())
    client = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)
    messages: Any = [{"role": "user", "content": "hello"}]
    times = []
    for i in range(n + 5):  # the first 5 warm up connections and imports
        t0 = time.perf_counter_ns()
        for _ in client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=20, stream=True
        ):
            pass
        if i >= 5:
            times.append((time.perf_counter_ns() - t0) / 1e6)
    client.close()
    streamguard.uninstrument()
    t0 = time.perf_counter_ns()
    for provider in providers.values():
        provider.shutdown()
    flush = (time.perf_counter_ns() - t0) / 1e9
    print(json.dumps({"stream_ms": times, "exit_flush_s": flush}), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
