"""instrument() loads the price table on a warm-up thread. A module that thread is importing
sits half made in ``sys.modules``, where libraries look their optional dependencies up: openai
looks for ``httpx2`` on every client it builds, and CrewAI, building one right after
instrument(), failed with "partially initialized module 'httpx2' has no attribute 'URL'".
After instrument() returns, the thread imports only the table's own modules."""

from __future__ import annotations

import os
import subprocess
import sys

_HALF_MADE = """
import sys, threading
assert "genai_prices" not in sys.modules and "httpx2" not in sys.modules
import streamguard
streamguard.instrument()
(warmup,) = [t for t in threading.enumerate() if t.name == "streamguard-warmup"]
seen = set()
while warmup.is_alive():
    for name, module in list(sys.modules.items()):
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            seen.add(name)
print(" ".join(sorted(seen)))
"""


def test_after_instrument_no_other_package_is_half_made() -> None:
    """In a fresh process, where neither the table nor its packages are imported yet. Only
    top-level modules count: a package's submodules (pydantic's, loaded on first use) are
    reached through the import system, which waits for a module another thread is making."""
    result = subprocess.run(
        [sys.executable, "-c", _HALF_MADE],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STREAMGUARD_SIGNING_KEY": "ab" * 32},
    )
    assert result.returncode == 0, result.stderr
    top_level = {name for name in result.stdout.split() if "." not in name}
    assert top_level == {"genai_prices"}, result.stdout
