"""2. Receipt: finalize + seal (sign) + emit, per receipt, HMAC-SHA256 and Ed25519.

Each stream is a ``GuardedIterator`` over a 3-item list whose upstream close is a no-op, with
its 3 units handed over and not exhausted. ``close()`` then runs the whole finalize path
synchronously: cut the counters, close the upstream, build the receipt fields (pricing
included), canonical bytes + hash + signature + chain, the in-memory sink, and telemetry (span
attributes, the receipt span event, the receipt log record, metrics, span end). Timed in blocks
of streams, interleaved with the baseline: ``json.dumps`` of a receipt dict, in the same run.

Run twice by the driver: with the OTel no-op API, and with SDK providers whose exporters are the
SDK's in-memory ones (realistic: the span, its event and the log record are really built).

Goals: < 50 us (HMAC), < 150 us (Ed25519).
"""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks import _common as c

GOALS_US = {"hmac": 50.0, "ed25519": 150.0}


def _noop() -> None:
    return None


def _open(rt: Any, n: int) -> list[Any]:
    from streamguard import GuardedIterator

    streams = []
    for _ in range(n):
        g = GuardedIterator(
            ["a", "b", "c"],
            close=_noop,
            provider="openai",
            model="gpt-4o-mini",
            max_tokens=256,
            runtime=rt,
            stall_timeout=None,
        )
        next(g)
        next(g)
        next(g)
        streams.append(g)
    return streams


def _finalize_block(rt: Any, n: int) -> float:
    """us per receipt: ``close()`` on ``n`` open streams (opened outside the clock)."""
    streams = _open(rt, n)
    t0 = time.perf_counter_ns()
    for g in streams:
        g.close()
    elapsed = time.perf_counter_ns() - t0
    if len(rt.sinks[0]) != n:
        raise RuntimeError(f"expected {n} receipts, got {len(rt.sinks[0])}")
    c.clear_sinks(rt)
    c.clear_otel()
    return elapsed / n / 1000


def _dumps_block(receipt_dict: dict[str, Any], n: int) -> float:
    dumps = json.dumps
    t0 = time.perf_counter_ns()
    for _ in range(n):
        dumps(receipt_dict)
    return (time.perf_counter_ns() - t0) / n / 1000


def run() -> dict[str, Any]:
    mode = c.OTEL_MODE
    c.setup_otel(mode, retain=True)
    n = 100 if c.QUICK else 200
    reps = 5 if c.QUICK else 15
    runtimes = {kind: c.make_runtime(signer=kind, stall_timeout=None) for kind in GOALS_US}
    sample = _open(runtimes["hmac"], 1)[0]
    t0 = time.perf_counter_ns()
    sample.close()  # the first receipt of the process: loads the pricing tables
    cold_ms = (time.perf_counter_ns() - t0) / 1e6
    receipt_dict = sample.receipt.to_dict()
    c.clear_sinks(runtimes["hmac"])
    res = c.interleave(
        {
            "json.dumps": lambda: _dumps_block(receipt_dict, n),
            "hmac": lambda: _finalize_block(runtimes["hmac"], n),
            "ed25519": lambda: _finalize_block(runtimes["ed25519"], n),
        },
        reps,
    )
    for rt in runtimes.values():
        rt.shutdown(timeout=1.0)
    label = "OTel SDK, in-memory exporters" if mode == "sdk" else "OTel no-op API"
    figures = []
    for kind, limit in GOALS_US.items():
        fig = c.figure(
            f"receipt.{kind}.{mode}",
            f"Receipt finalize+seal+emit, {kind}, {label}",
            "us/receipt",
            baseline_name="json.dumps(receipt dict)",
            baseline=res["json.dumps"],
            name=f"close() -> sealed, emitted receipt ({kind})",
            values=res[kind],
            note=f"blocks of {n} receipts; in-memory receipt sink, no ledger file",
        )
        figures.append(c.goal(fig, "value", "<", limit, f"< {limit:g} us per receipt"))
    return {
        "figures": figures,
        "receipt_json_bytes": len(json.dumps(receipt_dict)),
        "first_receipt_ms": cold_ms,
    }


def profile(ids: list[str]) -> dict[str, Any]:
    from benchmarks._profile import profile as prof

    c.setup_otel(c.OTEL_MODE, retain=True)
    n = 500 if c.QUICK else 2000
    out: dict[str, Any] = {}
    for fid in ids:
        kind = fid.split(".")[1]
        rt = c.make_runtime(signer=kind, stall_timeout=None)
        _open(rt, 1)[0].close()  # the first receipt loads the pricing tables: not profiled
        streams = _open(rt, n)

        def body(streams: list[Any] = streams) -> None:
            for g in streams:
                g.close()

        out[fid] = prof(body, units=n)
        rt.shutdown(timeout=1.0)
    return out
