"""Render ``results.json`` (the driver's document) as ``RESULTS.md``.

Everything in RESULTS.md comes from the run: re-render with
``python -m benchmarks.report benchmarks/results.json > benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

SECTIONS = (
    ("engine.", "1. Engine overhead per unit"),
    ("receipt.", "2. Receipt: finalize + seal + emit"),
    ("memory.", "3. Memory per open idle stream"),
    ("sdk.", "4. Per-chunk overhead against the bare SDK (in-memory transport)"),
    ("stop.", "5. Stop latency (stop signal to upstream socket closed)"),
    ("concurrency.", "6. Concurrent async streams"),
    ("money.", "7. Money and policy overhead per chunk"),
    ("collector_down.", "8. Collector down (OTLP endpoint dead)"),
    ("long_lived.", "9. Long-lived task: memory per stream after warm-up"),
    ("floor.", "10. Cost at the floor: CPU time against the bare SDK and a do-nothing proxy"),
    ("peers.", "11. Peers (OpenLLMetry, OTel openai-v2) beside the floor, OTel SDK"),
    ("scale.", "12. Scale: 1,000 and 10,000 concurrent async streams, CPU time and RSS"),
)

METHOD = """\
- **Same-run baselines.** Every figure is measured against a baseline in the same process and
  run, with the repetitions interleaved (A B, B A, A B, ...: the order flips every repetition so
  a drift of the machine hits both sides) after a discarded warm-up, and a `gc.collect()` before
  each. Values are **medians** of the repetitions; **ratio** is the median of the paired
  ratios (each repetition over the baseline run next to it), with their min-max spread.
  Latencies are distributions of single events (nearest-rank percentiles); their ratio is
  p99 over the baseline's p99 (p50 ratio alongside).
- **Runtime under test.** HMAC-SHA256 signer (Ed25519 where stated), receipts to an in-memory
  sink (`streamguard.testing.sinks.InMemoryReceiptSink`; a counting sink that keeps nothing
  for memory figures), **no ledger file**: no file I/O or fsync in any number. Default options
  (stall timer 30 s, armed per stream) unless stated. `STREAMGUARD_*` and `OTEL_*` variables
  of the machine are ignored.
- **OTel.** *no-op API*: no providers installed (the API's default). *SDK*: `TracerProvider`
  with `SimpleSpanProcessor`, `LoggerProvider` with `SimpleLogRecordProcessor`,
  `MeterProvider` with an `InMemoryMetricReader`; exporters in memory (the SDK's in-memory
  exporters for the receipt benchmark, exporters that drop what they get elsewhere, so that no
  growing list counts as the guard's memory). Spans, receipt events and log records are really
  built in SDK mode.
- **Isolation.** Each benchmark runs in a fresh worker process, one at a time. The loopback
  upstream (`streamguard.testing.Upstream`, uvicorn) of benchmarks 5 and 6 runs in a process
  of its own, so it does not compete with the client for the GIL; both use the system-wide
  `time.monotonic_ns()` clock.
- cProfile (for missed goals) inflates many small calls: read its shares and rankings, not
  its absolute times.
"""


def num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    v = float(value)
    if v != v:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _spread(fig: dict[str, Any]) -> str:
    s = fig.get("ratio_spread") or []
    return f" [{s[0]:.2f}-{s[1]:.2f}]" if len(s) == 2 else ""


def _goal_cell(fig: dict[str, Any]) -> str:
    g = fig.get("goal")
    if g is None:
        return ""
    if g["met"]:
        return "met"
    unit = "" if g["metric"] == "ratio" else f" {fig['unit'].split('/')[0]}"
    return f"**missed** by {num(g['missed_by'])}{unit} ({g['missed_by_factor']:.2f}x the limit)"


def _figures(doc: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for job in doc["jobs"]:
        for fig in job.get("figures", []):
            out.append((job, fig))
    return out


def _summary(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| Goal | Figure | Measured | Same-run baseline | Ratio | Result |",
        "|---|---|---|---|---|---|",
    ]
    for _job, fig in _figures(doc):
        g = fig.get("goal")
        if g is None:
            continue
        metric = g["metric"]
        shown = ratio(g["value"]) if metric == "ratio" else f"{num(g['value'])} {fig['unit']}"
        label = {"added": " added", "p99": " p99", "value": "", "ratio": " (ratio)"}[metric]
        base = f"{fig['baseline_name']}: {num(fig['baseline'])} {fig['unit']}"
        if metric == "p99":
            base = f"{fig['baseline_name']}: p99 {num(fig['baseline'])} {fig['unit']}"
        lines.append(
            f"| {g['text']} | {fig['title']} | {shown}{label} | {base} "
            f"| {ratio(fig.get('ratio'))} | {_goal_cell(fig)} |"
        )
    return lines


def _median_table(figs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| # | Figure | Baseline (same run) | Guarded | Added | Ratio [spread] | Reps | Goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, fig in enumerate(figs, 1):
        unit = fig["unit"]
        lines.append(
            f"| {i} | {fig['title']} | {fig['baseline_name']}: {num(fig['baseline'])} {unit} "
            f"| {num(fig['value'])} {unit} | {num(fig['added'])} {unit} "
            f"| {ratio(fig['ratio'])}{_spread(fig)} | {fig['reps']} | {_goal_cell(fig)} |"
        )
    return [*lines, "", *_notes(figs)]


def _notes(figs: list[dict[str, Any]]) -> list[str]:
    """Each distinct note once, with the table rows (``#``) it applies to."""
    notes = [fig.get("note") or "" for fig in figs]
    if notes and all(n == notes[0] for n in notes):
        return [f"- All rows: {notes[0]}"] if notes[0] else []
    out: list[str] = []
    for note in dict.fromkeys(n for n in notes if n):
        rows = [str(i) for i, n in enumerate(notes, 1) if n == note]
        out.append(f"- {'Row' if len(rows) == 1 else 'Rows'} {', '.join(rows)}: {note}")
    return out


def _latency_table(figs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| # | Figure | n | p50 | p90 | p99 | max | Baseline (same run) | base p50 | base p99 "
        "| ratio p50 | ratio p99 | Goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, fig in enumerate(figs, 1):
        lines.append(
            f"| {i} | {fig['title']} ({fig['unit']}) | {fig['n']} | {num(fig['p50'])} "
            f"| {num(fig['p90'])} | {num(fig['p99'])} | {num(fig['max'])} "
            f"| {fig['baseline_name']} (n={fig['baseline_n']}) | {num(fig['baseline_p50'])} "
            f"| {num(fig['baseline_p99'])} | {ratio(fig.get('ratio_p50'))} "
            f"| {ratio(fig.get('ratio'))} | {_goal_cell(fig)} |"
        )
    return [*lines, "", *_notes(figs)]


def _extras(prefix: str, doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for job in doc["jobs"]:
        mod = job.get("module")
        if prefix == "receipt." and mod == "receipts" and "first_receipt_ms" in job:
            lines.append(
                f"- OTel {job['otel']}: the first receipt of the process took "
                f"{num(job['first_receipt_ms'])} ms (it loads the pricing tables); a receipt "
                f"is {job.get('receipt_json_bytes')} bytes as JSON."
            )
        if prefix == "sdk." and mod == "sdk_overhead" and "checks" in job:
            checks = ", ".join(
                f"{k}: {v['wire_frames']} frames / {v['chunks_bare']} chunks"
                for k, v in job["checks"].items()
            )
            lines.append(
                f"- Bodies served ({job.get('tokens_per_stream')} tokens): wire frames / chunks "
                f"the bare SDK yields: {checks}. Every guarded stream produced its one receipt."
            )
        if prefix == "scale." and mod == "scale":
            lines += _scale_why(job)
        if prefix == "stop." and mod == "stop_latency" and "upstream" in job:
            lines.append(
                f"- Upstream token interval {num(job.get('token_interval_ms'))} ms. "
                "Tokens the upstream generated after t0 and connections it did not see close:"
            )
            for series, sides in job["upstream"].items():
                parts = []
                for side, v in sides.items():
                    parts.append(
                        f"{side}: {v['stops']} stops, max {v['tokens_after_stop_max']} token(s) "
                        f"after the stop, {v['not_disconnected']} not seen disconnecting"
                    )
                lines.append(f"  - {series}: " + "; ".join(parts))
        if prefix == "concurrency." and mod == "concurrency" and "network" in job:
            net = job["network"]
            tried = ", ".join(
                f"{t['streams']} streams: {'ok' if t['ok'] else 'FAILED'} "
                f"({t['errors']} errors, {t['upstream_completed']} completed upstream"
                + (f"; first error {t['first_error']}" if t.get("first_error") else "")
                + ")"
                for t in net.get("tried", [])
            )
            lines.append(
                f"- Over HTTP: target {net.get('target_streams')} concurrent streams, "
                f"ran {net.get('streams')}. Probe runs: {tried}. Failed measured runs: "
                f"{net.get('failed_runs')}."
            )
            if net.get("streams") != net.get("target_streams"):
                lines.append(
                    f"- **The upstream could not serve {net.get('target_streams')} concurrent "
                    f"streams reliably on this machine; the figures are for "
                    f"{net.get('streams')}.**"
                )
    return lines


def _profile(fid: str, prof: dict[str, Any]) -> list[str]:
    lines = [f"### Profile: `{fid}`", ""]
    if "allocations" in prof:
        lines += [
            "Allocation sites of the held streams (tracemalloc, per stream):",
            "",
            "| Where | bytes/stream | blocks/stream |",
            "|---|---|---|",
        ]
        for row in prof["allocations"]:
            lines.append(
                f"| `{row['where']}` | {num(row['bytes_per_stream'])} "
                f"| {num(row['count_per_stream'])} |"
            )
        return [*lines, ""]
    units = prof.get("units") or 0
    lines += [
        f"Profiled {num(prof['total_s'])} s over {units:,} units (per-unit columns divide by "
        "that).",
        "",
        "Most own time (where the CPU goes):",
        "",
        "| Function | calls | own s | share | own ns/unit |",
        "|---|---|---|---|---|",
    ]
    for row in prof["by_own_time"]:
        lines.append(
            f"| `{row['where']}` | {row['ncalls']:,} | {row['tottime_s']:.4f} "
            f"| {row['share'] * 100:.1f}% | {num(row['per_unit_ns'])} |"
        )
    if "streamguard_by_own" in prof:
        lines += [
            "",
            f"StreamGuard's own code: {prof['streamguard_own_share'] * 100:.1f}% of the profiled "
            f"time ({num(prof['streamguard_own_s'] / units * 1e9 if units else None)} ns/unit; "
            "built-ins it calls, such as lock methods, not included). Its functions by own time:",
            "",
            "| Function | calls | own s | share | own ns/unit |",
            "|---|---|---|---|---|",
        ]
        for row in prof["streamguard_by_own"][:10]:
            lines.append(
                f"| `{row['where']}` | {row['ncalls']:,} | {row['tottime_s']:.4f} "
                f"| {row['share'] * 100:.1f}% | {num(row['per_unit_ns'])} |"
            )
    lines += [
        "",
        "StreamGuard functions by cumulative time (callees included):",
        "",
        "| Function | calls | cum s | cum ns/unit |",
        "|---|---|---|---|",
    ]
    for row in prof["streamguard_by_cum"]:
        lines.append(
            f"| `{row['where']}` | {row['ncalls']:,} | {row['cumtime_s']:.4f} "
            f"| {num(row['cum_per_unit_ns'])} |"
        )
    return [*lines, ""]


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    out = [
        "# StreamGuard benchmark results",
        "",
        "Generated by `" + doc["command"] + "` (`make bench`); do not edit by hand. "
        "See `benchmarks/README.md` for what each figure means.",
        "",
    ]
    if doc.get("quick"):
        out += [
            "> **Quick run** (reduced sizes, a smoke test): the numbers are indicative only.",
            "",
        ]
    out += [
        f"- Run: {doc['started_at']}, {doc['duration_s']} s, commit "
        f"{doc.get('git_commit') or 'unknown'}",
        f"- CPU: {m['cpu']}; {m['cores']} cores ({m.get('cores_usable')} usable); "
        f"{m.get('memory_gb')} GB RAM; {m['os']}",
        f"- Load average at start / end: {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}"
        f" / {', '.join(f'{x:.2f}' for x in doc.get('loadavg_at_end', []))} "
        "(a shared machine: hence ratios against same-run baselines)",
        f"- Python {m['python']} ({m['python_impl']}); {pkgs}",
        "",
        "## Goals",
        "",
        *_summary(doc),
        "",
        "## Method",
        "",
        METHOD,
    ]
    errors = [j for j in doc["jobs"] if "error" in j]
    if errors:
        out += ["## Benchmarks that did not run", ""]
        for job in errors:
            out += [f"### {job['module']} (OTel {job.get('otel')})", "", "```", job["error"]]
            out += ["```", ""]
    for prefix, title in SECTIONS:
        figs = [f for _j, f in _figures(doc) if f["id"].startswith(prefix)]
        if not figs:
            continue
        out += [f"## {title}", ""]
        if prefix == "floor.":
            out += [*_side_by_side(doc), ""]
            out += [*_why_per_chunk(doc), ""]
        medians = [f for f in figs if "p99" not in f]
        latencies = [f for f in figs if "p99" in f]
        if medians:
            out += [*_median_table(medians), ""]
        if latencies:
            out += [*_latency_table(latencies), ""]
        extras = _extras(prefix, doc)
        if extras:
            out += [*extras, ""]
    faults = [(j["module"], j["otel"], j.get("internal_faults")) for j in doc["jobs"]]
    faults = [f for f in faults if f[2]]
    if faults:
        out += ["## StreamGuard internal faults reported during the run", ""]
        for module, otel, items in faults:
            out += [f"- {module} (OTel {otel}): " + "; ".join(items[:5])]
        out.append("")
    if doc.get("profiles"):
        out += ["## Profiles of the missed goals", ""]
        for fid, prof in doc["profiles"].items():
            out += _profile(fid, prof)
    return "\n".join(out).rstrip() + "\n"


_COLUMNS = (
    ("floor.noop", "floor (do-nothing proxy)"),
    ("guarded.noop", "StreamGuard, OTel API"),
    ("guarded.sdk", "StreamGuard, OTel SDK"),
    ("openllmetry.sdk", "OpenLLMetry, OTel SDK"),
    ("otel-openai-v2.sdk", "OTel openai-v2, OTel SDK"),
)


def _side_by_side(doc: dict[str, Any]) -> list[str]:
    """Benchmarks 9 and 10 in one table: per SDK, mode and stream shape, what each variant adds
    to the bare SDK (its own same-run baseline) and the ratio."""
    rows: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for _job, fig in _figures(doc):
        parts = fig["id"].split(".")
        if parts[0] not in ("floor", "peers") or parts[1] == "startup":
            continue
        shape, provider, mode = parts[1], ".".join(parts[2:-3]), parts[-3]
        variant = ".".join(parts[-2:])
        if parts[0] == "peers" and parts[-2] == "floor":
            continue  # the in-process floor (benchmark 9) is the one shown
        rows.setdefault((shape, provider, mode), {})[variant] = fig
    if not rows:
        return []
    head = "| stream | SDK | mode | bare | " + " | ".join(t for _k, t in _COLUMNS) + " |"
    out = [
        "Added CPU time per chunk (1,000-chunk streams, ns) and per 1-chunk stream (us), and the "
        "ratio to the bare SDK measured beside it (median of paired ratios). Goals: <= 500 ns "
        "and <= 1.05 per chunk; <= 100 us per stream with the OTel SDK.",
        "",
        head,
        "|" + "---|" * (4 + len(_COLUMNS)),
    ]
    for (shape, provider, mode), cells in sorted(rows.items()):
        base = next(iter(cells.values()))
        line = f"| {'per chunk' if shape == 'chunk' else '1-chunk'} | {provider} | {mode} | "
        line += f"{num(base['baseline'])} {base['unit'].split()[-1]} |"
        for key, _title in _COLUMNS:
            fig = cells.get(key)
            if fig is None:
                line += " - |"
                continue
            sign = "+" if fig["added"] >= 0 else ""
            line += f" {sign}{num(fig['added'])} (x{fig['ratio']:.3f}) |"
        out.append(line)
    return out


def _why_per_chunk(doc: dict[str, Any]) -> list[str]:
    """Why a per-chunk goal is missed: the per-chunk figure includes the ``create`` call, so it
    holds the per-stream cost (the 1-chunk figure of the same job) spread over the stream's
    chunks, plus what each chunk adds on its own (the rest)."""
    figs = {f["id"]: f for _j, f in _figures(doc) if f["id"].startswith("floor.")}
    lines = []
    for fid, fig in sorted(figs.items()):
        parts = fid.split(".")
        if parts[1] != "chunk" or fig.get("variant") != "guarded" or not fig.get("chunks"):
            continue
        stream = figs.get(".".join(["floor", "stream", *parts[2:]]))
        if stream is None:
            continue
        share = stream["added"] * 1000.0 / fig["chunks"]  # us per stream -> ns per chunk
        met = fig.get("goal", {}).get("met")
        floor = figs.get(".".join([*parts[:-2], "floor", "noop"]))
        noise = abs(floor["added"]) if floor is not None else None
        lines.append(
            f"| {'.'.join(parts[2:-3])} | {parts[-3]} | {parts[-1]} | {num(fig['added'])} "
            f"| {num(share)} | {num(fig['added'] - share)} | {num(noise)} "
            f"| {'met' if met else 'missed'} |"
        )
    if not lines:
        return []
    return [
        "Why a per-chunk figure misses: it includes the `create` call, so the per-stream cost "
        "(the 1-chunk stream figure of the same run) spread over the stream's chunks is part of "
        "it; the rest is what each chunk adds on its own (proxy or in-place hook, driver, "
        "meter, counters). CPU ns per chunk, StreamGuard rows. The do-nothing proxy's own "
        "figure (|floor|) is the run's noise for a layer that adds ~0.2-0.4 us: a StreamGuard "
        "figure within it (a negative one, on the SDKs that spend 90-600 us per chunk) is not "
        "resolved by this run.",
        "",
        "| SDK | mode | OTel | added per chunk | of it: per-stream cost / chunks | of it: "
        "per chunk itself | noise: \\|floor\\| | goal |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
    ]


def _scale_why(job: dict[str, Any]) -> list[str]:
    """What a throughput ratio means in CPU per stream: a stream is a handful of chunks, so the
    guard's per-stream cost (benchmark 10's 1-chunk figure) is most of what it adds."""
    lines = []
    for fig in job.get("figures", []):
        if not fig["id"].startswith("scale.throughput.") or not fig["value"]:
            continue
        bare_us = 1e6 / fig["baseline"]
        added_us = 1e6 / fig["value"] - bare_us
        lines.append(
            f"- {fig['title']}: {num(bare_us)} us of CPU per bare stream, "
            f"{num(added_us)} us added per guarded stream ({fig.get('note', '')})."
        )
    return lines


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        sys.stdout.write(render(json.load(f)))
