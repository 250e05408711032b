"""``make soak``: tests/test_overload.py's scenario with the default stall timeout (30 s).

5,000 concurrent readers on one loop, on a machine loaded by a CPU hog per core, and the loop
blocked once for longer than the default stall timeout (31 s): every reader completes and the
consumer that really stopped is cut as ``consumer_stalled``. The old rule (``looptimers``'
private ``_LAG_COMPENSATION`` off) cuts the readers in the same scenario. ~90 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from streamguard._engine import looptimers
from test_overload import STREAMS, run_overload

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _loaded_machine() -> Iterator[None]:
    """A busy loop per core, in processes of their own, for the whole test."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_5000_readers_complete_with_the_default_stall_timeout_and_a_stopped_one_is_cut() -> None:
    sink, outcome, _ = run_overload(stall_timeout=None, block=31.0, blocks=1)
    assert outcome == {"read all": STREAMS}
    assert sink.reasons["completed"] == STREAMS
    assert sink.stopped_reason == "consumer_stalled"


def test_the_old_rule_cuts_the_readers_with_the_default_stall_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(looptimers, "_LAG_COMPENSATION", False)
    sink, outcome, _ = run_overload(stall_timeout=None, block=31.0, blocks=1)
    # How many it cuts depends on how fast the loop drains once it resumes (receipts are sealed
    # off the loop since issue 16, so it drains faster); any reader cut is the old rule's fault.
    assert outcome["cut: consumer_stalled"] > STREAMS // 50, outcome
    assert sink.stopped_reason == "consumer_stalled"
