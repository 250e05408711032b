"""``make soak``: one long-lived task consumes 20,000 guarded streams: memory stays flat, no
core is kept. (In ``make test`` until its ~45 s pushed the default suite past its 10 minutes;
``tests/test_long_lived_collectable.py`` keeps the quick per-stream checks there.)

Each case runs ``python -m benchmarks.long_lived measure`` in a fresh process (the OTel no-op
API, no pytest objects: StreamGuard's memory and nothing else): the task consumes a warm-up
batch, then 20,000 streams, then a batch with tracemalloc on, ending the streams in every way
a worker loop sees (exhausted, break + close, break + drop, an exception in the loop, a read
cancelled by a timeout, a consumer that stops and is cut by the stall timer while the task goes
on). The same task unguarded runs first in the same process. The figures go to
benchmarks/RESULTS.md (``python -m benchmarks``).

The bounds: no StreamCore alive afterwards (weakly tracked, after one collection), RSS growth
after warm-up under 200 B per stream, traced growth under 200 B per stream (a retained core
costs ~5 KB traced), one receipt per stream, every way of ending seen.

The same over the real openai SDK (``source sdk``: 20,000 streams on asyncio and on trio, with
the unguarded SDK as the baseline) is ``tests_soak/test_long_lived_sdk.py``: ~5 ms a stream on
an idle machine (the SDK's own CPU and the upstream's). (It was ~25 ms: the test upstream's
sockets had no TCP_NODELAY, so each response waited 40 ms for a delayed ACK; fixed in
``streamguard.testing.Upstream``.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.long_lived import run_child

LIMIT = 200.0  # bytes per stream
REASONS = {"completed", "consumer_closed", "consumer_cancelled", "consumer_stalled"}


def _check(res: dict[str, Any], streams: int) -> None:
    g = res.get("guarded", {})
    assert "error" not in g, g
    assert res["alive_cores"] == 0
    assert g.get("alive_cores_in_child", 0) == 0
    assert g["rss_bytes_per_stream"] < LIMIT, res
    assert g["traced_bytes_per_stream"] < LIMIT, res
    warmup, traced = max(500, streams // 10), max(300, streams // 10)
    assert res["receipts"] == warmup + streams + traced
    assert set(res["reasons"]) == REASONS, res["reasons"]
    assert res["reasons"]["consumer_stalled"] > (warmup + streams + traced) // 12, res["reasons"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_20000_streams_in_one_task_leave_nothing_behind(loop: str) -> None:
    _check(run_child(loop, "engine", 20_000), 20_000)


@pytest.mark.timeout(300)
def test_20000_streams_in_one_task_of_a_forked_worker_leave_nothing_behind() -> None:
    res = run_child("asyncio", "engine", 20_000, fork=True)
    assert res["guarded"]["exit_status"] == 0
    assert res["guarded"]["child_pid"] != res["pid"]
    _check(res, 20_000)
