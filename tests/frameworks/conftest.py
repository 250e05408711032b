"""The frameworks tier: real frameworks from PyPI open the streams, over real HTTP on loopback,
against the project's upstream. Run with ``make frameworks`` (its own venv).

Every test instruments StreamGuard with a short stall timeout and an in-memory sink, and
checks afterwards that no stream got more than one receipt.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator

import pytest

pytest.register_assert_rewrite("tests.frameworks._harness")

# LiteLLM fetches its price map from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# The Agents SDK exports traces to OpenAI unless told not to.
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

import streamguard  # noqa: E402  (the environment above must be set before any framework import)
from streamguard._receipts.signing import HmacSigner  # noqa: E402
from streamguard.testing import InMemoryReceiptSink, Upstream  # noqa: E402

from ._harness import INTERVAL, STALL  # noqa: E402


@pytest.fixture(scope="package")
def shared_upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=INTERVAL, default_max_tokens=64) as up:
        yield up


@pytest.fixture
def up(shared_upstream: Upstream) -> Upstream:
    shared_upstream.reset()
    return shared_upstream


@pytest.fixture
def sink() -> InMemoryReceiptSink:
    return InMemoryReceiptSink()


@pytest.fixture
def guarded(sink: InMemoryReceiptSink) -> Iterator[InMemoryReceiptSink]:
    """StreamGuard on, stall timeout ``STALL``; afterwards: uninstrumented, one receipt each."""
    streamguard.instrument(
        sinks=[sink], signer=HmacSigner(bytes(32), key_id="test"), stall_timeout=STALL
    )
    try:
        yield sink
    finally:
        streamguard.uninstrument()
    twice = sink.streams_with_more_than_one()
    assert not twice, f"streams with more than one receipt: {twice}"


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
