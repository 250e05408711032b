"""Generate the bundled Grafana dashboards from Python (grafana-foundation-sdk 0.0.21).

    make dashboards                         # rewrite dashboards/*.json
    python -m dashboards.generate --check   # exit 1 if the committed JSON is stale

Guarantees, each checked by tests/test_dashboards.py:

- The committed JSON is exactly what this module writes (sorted keys, two-space indent,
  trailing newline); the tests fail when it is stale.
- Every query reaches its data source through a template variable (``prometheus_datasource``,
  ``loki_datasource``, ``tempo_datasource``), never a fixed uid, so the same files work when
  provisioned (Grafana picks the default data source of each type) and when imported by hand.
- Metric names are the Prometheus forms of DESIGN section 6 as the OTel->Prometheus translation
  writes them (dots to underscores, ``_seconds`` for ``s``, ``_total`` on counters, ``{...}``
  units dropped, ``USD`` kept). They were read off a real scrape, and the end-to-end test keeps
  them honest: every query returns data from a Prometheus that scraped the SDK.
- Every PromQL expression parses with ``promtool`` once Grafana's macros are substituted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python dashboards/generate.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboards._common import JSONEncoder
from dashboards.overview import overview
from dashboards.receipts import receipts

HERE = Path(__file__).resolve().parent

DASHBOARDS: dict[str, Callable[[], Any]] = {
    "streamguard-overview.json": overview,
    "streamguard-receipts.json": receipts,
}


def render() -> dict[str, str]:
    """File name -> the exact text the generator writes for it."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(build().build()) + "\n" for name, build in DASHBOARDS.items()}


def stale(directory: Path = HERE) -> list[str]:
    """Names of the files in ``directory`` that differ from what ``render()`` gives."""
    out = []
    for name, text in render().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate StreamGuard's Grafana dashboards.")
    parser.add_argument("--out", type=Path, default=HERE, help="directory (default: dashboards/)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out)
        if names:
            print(f"stale: {', '.join(names)}; run `make dashboards`", file=sys.stderr)
        return 1 if names else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
