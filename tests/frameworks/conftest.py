"""The frameworks tier: real frameworks from PyPI open the streams, over real HTTP on loopback,
against the project's upstream. Run with ``make frameworks`` (its own venv).

Every test instruments StreamGuard with a short stall timeout and an in-memory sink, and
checks afterwards that no stream got more than one receipt.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import pytest

pytest.register_assert_rewrite("tests.frameworks._harness")

# LiteLLM fetches its price map from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# The Agents SDK exports traces to OpenAI unless told not to.
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

# The environment above must be set before any framework import.
from streamguard.testing import InMemoryReceiptSink  # noqa: E402

from ._harness import STALL  # noqa: E402

# ``up`` (a token every 20 ms: _harness.INTERVAL), ``sink`` and ``instrument_with`` come from
# streamguard.testing.pytest_plugin.


@pytest.fixture
def guarded(sink: InMemoryReceiptSink, instrument_with: Callable[..., None]) -> InMemoryReceiptSink:
    """StreamGuard on, stall timeout ``STALL``; afterwards: uninstrumented, one receipt each."""
    instrument_with(stall_timeout=STALL)
    return sink


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # One event loop for the tier: LangChain caches its async HTTP clients process-wide, so a
    # client made on one test's loop would be used on the next one's (closed) loop.
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


def pytest_configure(config: pytest.Config) -> None:
    # The frameworks' own deprecation and pydantic warnings are theirs, not failures of
    # StreamGuard; StreamGuard's own warnings (RuntimeWarning) still fail the test.
    for category in ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning"):
        config.addinivalue_line("filterwarnings", f"ignore::{category}")
    config.addinivalue_line("filterwarnings", "ignore::UserWarning")
    # LiteLLM leaves event loops and sockets of its own worker threads to the GC.
    config.addinivalue_line("filterwarnings", "ignore::ResourceWarning")
    config.addinivalue_line("filterwarnings", "ignore::pytest.PytestUnraisableExceptionWarning")
