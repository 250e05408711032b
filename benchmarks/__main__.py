"""``python -m benchmarks [--quick] [--out DIR] [--only NAME,...] [--no-profile]``

Runs every benchmark, each in a fresh worker process, one after the other (never two at once:
they would measure each other), then cProfiles the benchmarks whose goal was missed, and writes
``RESULTS.md`` and ``results.json`` into ``--out`` (default: this directory).

Exit status 0 when every benchmark ran (a missed goal is a result, not a failure: DESIGN 7);
1 when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from benchmarks.report import render

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: (module, OTel mode), in the order they run.
JOBS: tuple[tuple[str, str], ...] = (
    ("engine", "noop"),
    ("receipts", "noop"),
    ("receipts", "sdk"),
    ("memory", "noop"),
    ("memory", "sdk"),
    ("sdk_overhead", "sdk"),
    ("stop_latency", "sdk"),
    ("concurrency", "sdk"),
    ("collector_down", "sdk"),
    ("money", "noop"),
    ("long_lived", "noop"),
    ("floor", "noop"),
    ("floor", "sdk"),
    ("peers", "sdk"),
    ("scale", "noop"),
    ("scale", "sdk"),
)


def _env() -> dict[str, str]:
    # The machine's StreamGuard and OTel configuration must not change what is measured.
    return {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGUARD_", "OTEL_"))}


def _worker(
    module: str, otel: str, *, quick: bool, profile: list[str] | None, timeout: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks._worker", module, "--otel", otel]
        cmd += ["--result", str(result_path)]
        if quick:
            cmd.append("--quick")
        if profile:
            cmd += ["--profile", ",".join(profile)]
        try:
            proc = subprocess.run(
                cmd, cwd=REPO, env=_env(), timeout=timeout, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:g} s"}
        if result_path.exists():
            result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        else:
            result = {"error": f"exit status {proc.returncode}, no result"}
        if proc.returncode != 0 and "error" in result:
            result["stderr_tail"] = proc.stderr[-3000:]
        return result


def _missed(result: dict[str, Any]) -> list[str]:
    return [f["id"] for f in result.get("figures", []) if "goal" in f and not f["goal"]["met"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (< 60 s): a smoke run")
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md goes")
    parser.add_argument("--only", default="", help="comma-separated modules (engine,receipts,...)")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cProfile benchmarks that miss a goal (default: on, off with --quick)",
    )
    args = parser.parse_args(argv)
    profile = (not args.quick) if args.profile is None else args.profile
    only = {name for name in args.only.split(",") if name}
    jobs = [job for job in JOBS if not only or job[0] in only]
    unknown = only - {module for module, _ in JOBS}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    timeout = 300.0 if args.quick else 900.0  # quick floor: 1,000-chunk streams on 5 SDKs

    started = time.monotonic()
    machine = c.machine()
    started_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    results: list[dict[str, Any]] = []
    for module, otel in jobs:
        _say(f"{module} (OTel {otel}) ...")
        result = _worker(module, otel, quick=args.quick, profile=None, timeout=timeout)
        result["module"] = module
        result.setdefault("otel", otel)  # a worker that timed out wrote nothing
        results.append(result)
        _say(_summary_line(result))
    profiles: dict[str, Any] = {}
    if profile:
        for result in results:
            missed = _missed(result)
            if not missed:
                continue
            _say(f"profiling {result['module']} (OTel {result['otel']}): {', '.join(missed)} ...")
            prof = _worker(
                result["module"], result["otel"], quick=args.quick, profile=missed, timeout=timeout
            )
            if "error" in prof:
                _say(f"  profile failed: {prof['error'].strip().splitlines()[-1]}")
                continue
            profiles.update(prof.get("profiles", {}))

    doc = {
        "schema": "streamguard.benchmarks/1",
        "started_at": started_at.isoformat(),
        "quick": args.quick,
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine,
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
        "git_commit": _git_commit(),
        "jobs": results,
        "profiles": profiles,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (args.out / "RESULTS.md").write_text(render(doc), encoding="utf-8")
    failed = [r["module"] for r in results if "error" in r]
    _say(f"wrote {args.out / 'RESULTS.md'} and results.json in {doc['duration_s']} s")
    if failed:
        _say(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def _summary_line(result: dict[str, Any]) -> str:
    if "error" in result:
        error: str = result["error"]
        return "  ERROR: " + error.strip().splitlines()[-1]
    goals = [f["goal"] for f in result.get("figures", []) if "goal" in f]
    met = sum(1 for g in goals if g["met"])
    return f"  done in {result.get('seconds', '?')} s; goals met: {met}/{len(goals)}"


def _git_commit() -> str | None:
    """The commit measured, with a note when ``src/`` has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not head:
        return None
    return f"{head} (+ uncommitted changes in src/)" if dirty else head


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
