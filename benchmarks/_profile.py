"""cProfile a benchmark body and keep what dominates, for RESULTS.md.

Three views: the functions with the most own time (``tottime``: where the CPU really goes),
StreamGuard's own functions by own time, and by cumulative time (which entry point is
expensive, callees included). cProfile inflates the cost of many small calls, so read shares,
not absolute times.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PREFIXES = sorted(
    {str(Path(p).resolve()) + "/" for p in sys.path if p and Path(p).is_dir()},
    key=len,
    reverse=True,
)


def short_path(filename: str) -> str:
    """``streamguard/_engine/core.py`` rather than the absolute path of a checkout or venv."""
    path = str(Path(filename).resolve()) if filename.startswith("/") else filename
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _where(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func  # a built-in: "<method 'acquire' of '_thread.lock' objects>"
    return f"{short_path(filename)}:{line}({func})"


def profile(body: Callable[[], Any], *, top: int = 15, units: int = 0) -> dict[str, Any]:
    """Run ``body`` under cProfile. ``units``: divide times by this many units (per-unit view)."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        body()
    finally:
        prof.disable()
    stats = pstats.Stats(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1e-12
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "where": _where(filename, line, func),
                "ncalls": ncalls,
                "tottime_s": tottime,
                "cumtime_s": cumtime,
                "share": tottime / total,
                "per_unit_ns": (tottime / units * 1e9) if units else None,
                "cum_per_unit_ns": (cumtime / units * 1e9) if units else None,
            }
        )
    by_own = sorted(rows, key=lambda r: r["tottime_s"], reverse=True)[:top]
    ours = [r for r in rows if "streamguard/" in r["where"]]
    ours_own = sum(r["tottime_s"] for r in ours)
    return {
        "total_s": total,
        "units": units,
        "by_own_time": by_own,
        # StreamGuard's own lines only (not the built-ins they call, such as lock methods).
        "streamguard_own_s": ours_own,
        "streamguard_own_share": ours_own / total,
        "streamguard_by_own": sorted(ours, key=lambda r: r["tottime_s"], reverse=True)[:top],
        "streamguard_by_cum": sorted(ours, key=lambda r: r["cumtime_s"], reverse=True)[:top],
    }
