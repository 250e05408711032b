"""Per-chunk CPU cost of two revisions of StreamGuard, measured in the same run.

``python -m benchmarks.revisions [REV_A [REV_B]] [--rounds N] [--tokens N] [--out FILE]``
``python -m benchmarks.revisions REV_A REV_B --shape stream --otel sdk`` (per-stream cost)

A refactor that claims to add no call on the per-chunk path (issue 17: the split of
``_engine/core.py`` into ``core.py`` and ``lifecycle.py``, commit 3cae88a) is shown to, or not,
here. Each revision's ``src/`` is exported with ``git archive`` into a temporary directory; the
benchmark code is this tree's (``benchmarks.floor``'s cases: every SDK, sync and async, its real
parsing path over bytes served from memory), so both revisions run exactly the same measurement.

One round is one fresh process per revision, in the order A B, then B A, ... (a drift of the
machine cancels). In each process, every case times a block of guarded streams and a block of
bare streams, interleaved, in CPU time (``time.process_time_ns``); the process reports the CPU
ns added per chunk (guarded minus bare, medians of its repetitions). Across rounds the table
gives, per case and revision, the median and the min-max, and B's median minus A's.

Defaults: A = the commit before the split, B = the split (``3cae88a~1`` and ``3cae88a``).

``--shape stream`` measures the per-stream cost instead (issue 16): 1-token streams, a block of
``--streams`` streams timed up to ``streamguard.flush()`` (the receipt writer's thread is in the
process's CPU time), CPU us added per stream; ``--otel sdk`` with the OTel SDK providers and
in-memory exporters (``noop``: the API only). Its call count is the calls per whole stream on
every thread, the receipt writer's included (``threading.setprofile`` is set before
``instrument()`` starts that thread), guarded minus bare, over one block: deterministic too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import _common as c

REPO = Path(__file__).resolve().parent.parent
SPLIT = "3cae88a"


def _export(rev: str, into: Path) -> str:
    """``rev``'s ``src/`` in ``into``; returns the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "src"], cwd=REPO, capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def child(tokens: int, reps: int, k: int, otel: str = "noop") -> dict[str, float]:
    """In this process (``streamguard`` imported from PYTHONPATH): CPU ns added per chunk (per
    stream, in us, for 1-token streams: ``tokens == 1``)."""
    from benchmarks import floor

    c.setup_otel(otel, retain=False)
    out: dict[str, float] = {}
    from streamguard.testing import Upstream

    with Upstream(token_interval=0) as up:
        for provider in floor.PROVIDERS:
            for is_async in (False, True):
                case = floor.Case(provider, is_async, tokens, k, up.url)
                try:
                    case.record()
                    res = c.interleave({"bare": case.block, "guarded": case.guarded_block}, reps)
                finally:
                    case.close()
                if set(case.receipts) != {k}:
                    raise RuntimeError(f"{provider}: not every guarded stream had a receipt")
                added = c.median(res["guarded"]) - c.median(res["bare"])
                per = added / 1e3 if tokens == 1 else added / case.chunks
                out[f"{provider} {'async' if is_async else 'sync'}"] = per
    return out


def calls(tokens: int) -> dict[str, float]:
    """In this process: function calls (Python and C, ``sys.setprofile``) the guard adds per
    chunk, counted between consecutive chunks in the middle of a stream: a deterministic count
    of the per-chunk path, which no load on the machine changes."""
    from benchmarks import floor

    c.setup_otel("noop", retain=False)
    out: dict[str, float] = {}
    from streamguard.testing import Upstream

    with Upstream(token_interval=0) as up:
        for provider in floor.PROVIDERS:
            for is_async in (False, True):
                case = floor.Case(provider, is_async, tokens, 1, up.url)
                try:
                    case.record()
                    bare = _calls_between_chunks(case)
                    import streamguard

                    streamguard.instrument(**c.instrument_kwargs())
                    try:
                        _calls_between_chunks(case)  # the first stream patches lazily
                        guarded = _calls_between_chunks(case)
                    finally:
                        streamguard.uninstrument()
                finally:
                    case.close()
                out[f"{provider} {'async' if is_async else 'sync'}"] = guarded - bare
    return out


def stream_calls(k: int, otel: str) -> dict[str, float]:
    """In this process: function calls (Python and C) the guard adds per whole 1-token stream,
    on every thread (the receipt writer's too), over a block of ``k`` streams."""
    import threading

    import streamguard
    from benchmarks import floor
    from streamguard.testing import Upstream

    c.setup_otel(otel, retain=False)
    count = [0]

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" or event == "c_call":
            count[0] += 1

    def counted(block: Any) -> int:
        count[0] = 0
        sys.setprofile(profile)
        try:
            block()
        finally:
            sys.setprofile(None)
        return count[0]

    out: dict[str, float] = {}
    with Upstream(token_interval=0) as up:
        for provider in floor.PROVIDERS:
            for is_async in (False, True):
                case = floor.Case(provider, is_async, 1, k, up.url)
                try:
                    case.record()
                    case.block()
                    bare = counted(case.block)
                    threading.setprofile(profile)  # the writer's thread starts after this
                    try:
                        streamguard.instrument(**c.instrument_kwargs())
                        floor._join_warmup()
                        case.block()  # the first streams patch lazily and start the writer
                        guarded = counted(case.block)
                    finally:
                        threading.setprofile(None)  # type: ignore[arg-type]
                        streamguard.uninstrument()
                        c.clear_otel()
                finally:
                    case.close()
                out[f"{provider} {'async' if is_async else 'sync'}"] = (guarded - bare) / k
    return out


def _calls_between_chunks(case: Any) -> float:
    """Median calls between two chunks over the middle half of one stream."""
    from benchmarks import floor

    count = [0]
    marks: list[int] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" or event == "c_call":
            count[0] += 1

    async def consume_async() -> None:
        stream = floor.open_stream(case.provider, case.client, case.tokens)
        if asyncio.iscoroutine(stream):
            stream = await stream
        async for _ in stream:
            marks.append(count[0])

    def consume() -> None:
        if case.loop is not None:
            case.loop.run_until_complete(consume_async())
            return
        for _ in floor.open_stream(case.provider, case.client, case.tokens):
            marks.append(count[0])

    sys.setprofile(profile)
    try:
        consume()
    finally:
        sys.setprofile(None)
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    middle = gaps[len(gaps) // 4 : 3 * len(gaps) // 4]
    return c.median(middle)


def _process(src: Path, args: list[str]) -> dict[str, float]:
    """One fresh process with ``src``'s streamguard: the dict its last line prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGUARD_", "OTEL_"))}
    env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, "-m", "benchmarks.revisions", *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"the benchmark process for {src} failed:\n{done.stderr[-4000:]}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def _row(case: str, a: list[float], b: list[float]) -> str:
    def cell(v: list[float]) -> str:
        if min(v) == max(v):
            return f"{v[0]:.0f}"
        return f"{c.median(v):.0f} ({min(v):.0f} to {max(v):.0f})"

    return f"| {case} | {cell(a)} | {cell(b)} | {c.median(b) - c.median(a):+.0f} |"


def _table(runs: dict[str, list[dict[str, float]]]) -> list[str]:
    cases = list(runs["A"][0])
    lines = ["| case | A | B | B - A |", "|---|---|---|---|"]
    lines += [_row(k, [x[k] for x in runs["A"]], [x[k] for x in runs["B"]]) for k in cases]
    mean_a = [sum(x.values()) / len(x) for x in runs["A"]]
    mean_b = [sum(x.values()) / len(x) for x in runs["B"]]
    return [*lines, _row("mean of all cases", mean_a, mean_b)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev_a", nargs="?", default=f"{SPLIT}~1")
    ap.add_argument("rev_b", nargs="?", default=SPLIT)
    ap.add_argument("--rounds", type=int, default=6, help="CPU: processes per revision")
    ap.add_argument("--tokens", type=int, default=1000, help="chunks per stream")
    ap.add_argument("--reps", type=int, default=5, help="CPU: interleaved blocks per process")
    ap.add_argument("--streams", type=int, default=3, help="CPU: streams per block (median)")
    ap.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    ap.add_argument("--shape", choices=("chunk", "stream"), default="chunk")
    ap.add_argument("--otel", choices=("noop", "sdk"), default="noop", help="OTel API or SDK")
    ap.add_argument("--child", choices=("cpu", "calls", "stream-calls"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.shape == "stream":
        args.tokens = 1
    if args.child == "cpu":
        print(json.dumps(child(args.tokens, args.reps, args.streams, args.otel)))
        return
    if args.child == "calls":
        print(json.dumps(calls(args.tokens)))
        return
    if args.child == "stream-calls":
        print(json.dumps(stream_calls(args.streams, args.otel)))
        return
    cpu_args = ["--child", "cpu", "--tokens", str(args.tokens), "--reps", str(args.reps)]
    cpu_args += ["--streams", str(args.streams), "--otel", args.otel]
    with tempfile.TemporaryDirectory(prefix="sg-revs-") as tmp:
        revs = {}
        for name, rev in (("A", args.rev_a), ("B", args.rev_b)):
            commit = _export(rev, Path(tmp) / name)
            revs[name] = (rev, commit, Path(tmp) / name / "src")
        calls_args = ["--child", "calls", "--tokens", str(args.tokens)]
        if args.shape == "stream":
            calls_args = ["--child", "stream-calls", "--streams", str(args.streams)]
            calls_args += ["--otel", args.otel]
        counted = {n: [_process(revs[n][2], calls_args)] for n in ("A", "B")}
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                runs[name].append(_process(revs[name][2], cpu_args))
                print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)
    m = c.machine()
    if args.shape == "stream":
        calls_text = [
            "Function calls the guard adds per whole 1-token stream (Python and C calls,",
            "`sys.setprofile` on every thread, the receipt writer's included; guarded minus",
            f"bare over one block of {args.streams} streams; OTel {args.otel}; deterministic):",
        ]
        cpu_text = [
            f"CPU us added per 1-token stream over the bare SDK (OTel {args.otel}), blocks of",
            f"{args.streams} streams timed up to `streamguard.flush()` (process CPU: the",
            f"receipt writer's thread counted), {args.rounds} processes per revision",
            f"interleaved (A B, B A, ...), {args.reps} blocks each: median over processes",
            "(min to max).",
        ]
    else:
        calls_text = [
            "Function calls the guard adds per chunk (Python and C calls, `sys.setprofile`: the",
            f"median gap between two chunks over the middle half of a {args.tokens}-chunk stream,",
            "guarded minus bare; deterministic, one process per revision):",
        ]
        cpu_text = [
            f"CPU ns added per chunk over the bare SDK (OTel {args.otel}), {args.tokens}-chunk",
            f"streams, {args.rounds} processes per revision interleaved (A B, B A, ...),",
            f"{args.reps} blocks of {args.streams} streams each (the per-stream cost is in the",
            "figure, spread over the chunks): median over processes (min to max).",
        ]
    lines = [
        f"- A: `{revs['A'][0]}` = {revs['A'][1][:12]}",
        f"- B: `{revs['B'][0]}` = {revs['B'][1][:12]}",
        f"- machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, load at start "
        f"{' '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}; SDKs: {m['packages']}",
        "",
        *calls_text,
        "",
        *_table(counted),
    ]
    if args.rounds:
        lines += ["", *cpu_text, "", *_table(runs)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
