"""Run one benchmark in this (fresh) process and write its results as JSON.

    python -m benchmarks._worker MODULE --otel noop|sdk [--quick] [--profile ID,...] --result F

The driver (``python -m benchmarks``) starts one worker per benchmark and OTel mode, so global
OTel providers, SDK patches and tracemalloc never leak from one benchmark into another.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
import traceback
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._worker")
    parser.add_argument("module")
    parser.add_argument("--otel", choices=("noop", "sdk"), default="noop")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", default="", help="comma-separated figure ids to profile")
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)

    from benchmarks import _common as c

    c.OTEL_MODE = args.otel
    c.QUICK = args.quick
    # A benchmark measures; warnings and log records from the code under test are not its
    # output (they would only interleave with the driver's progress lines).
    warnings.simplefilter("ignore")
    logging.getLogger("streamguard").setLevel(logging.ERROR)

    module = importlib.import_module(f"benchmarks.{args.module}")
    started = time.monotonic()
    result: dict[str, object]
    try:
        if args.profile:
            result = {"profiles": module.profile(args.profile.split(","))}
        else:
            result = module.run()
    except Exception:
        result = {"error": traceback.format_exc()}
    result["seconds"] = round(time.monotonic() - started, 1)
    result["otel"] = args.otel
    from streamguard import _runtime

    result["internal_faults"] = [f"{where}: {exc!r}" for where, exc in _runtime.faults]
    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
