"""pytest fixtures for tests of code that runs under StreamGuard, against the local upstream.

Opt in from your top-level ``conftest.py`` (it is not loaded on its own)::

    pytest_plugins = ["streamguard.testing.pytest_plugin"]

    def test_my_relay_stops_the_model(up, instrument_with):
        instrument_with(stall_timeout=0.5)
        client = openai.OpenAI(base_url=up.openai_base_url, api_key="test")
        ...
        (record,) = up.wait_for_requests(1)

Fixtures:

- ``shared_upstream`` (session): one ``Upstream`` for the session, built from
  ``streamguard_upstream_options`` (session scope; default: a token every 20 ms, 64-token
  answers); stopped at the end, no thread left behind.
- ``up``: the shared upstream with its records and faults reset for this test.
- ``sink``: a fresh ``InMemoryReceiptSink``.
- ``streamguard_options``: the options every ``instrument_with`` call starts from (default
  none); override it in a ``conftest.py`` to give a package its own defaults.
- ``instrument_with(**options)``: ``streamguard.instrument`` with the test's ``sink`` and a
  fixed HMAC test key; after the test, ``uninstrument()`` and a failure if any stream got more
  than one receipt.
- ``instrumented``: ``instrument_with()`` with the defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamguard.testing.instrumenting import instrument_for_test, uninstrument_and_check
from streamguard.testing.sinks import InMemoryReceiptSink
from streamguard.testing.upstream import Upstream

__all__ = [
    "instrument_with",
    "instrumented",
    "shared_upstream",
    "sink",
    "streamguard_options",
    "streamguard_upstream_options",
    "up",
]


@pytest.fixture(scope="session")
def streamguard_upstream_options() -> dict[str, Any]:
    """Keyword arguments of the session's ``Upstream``."""
    return {"token_interval": 0.02, "default_max_tokens": 64}


@pytest.fixture(scope="session")
def shared_upstream(streamguard_upstream_options: dict[str, Any]) -> Iterator[Upstream]:
    with Upstream(**streamguard_upstream_options) as upstream:
        yield upstream


@pytest.fixture
def up(shared_upstream: Upstream) -> Upstream:
    shared_upstream.reset()
    return shared_upstream


@pytest.fixture
def sink() -> InMemoryReceiptSink:
    return InMemoryReceiptSink()


@pytest.fixture
def streamguard_options() -> dict[str, Any]:
    """Options every ``instrument_with`` call starts from; the call's own options win."""
    return {}


@pytest.fixture
def instrument_with(
    sink: InMemoryReceiptSink, streamguard_options: dict[str, Any]
) -> Iterator[Callable[..., None]]:
    used = False

    def instrument(**options: Any) -> None:
        nonlocal used
        used = True
        instrument_for_test(sink, **{**streamguard_options, **options})

    yield instrument
    if used:
        uninstrument_and_check(sink)


@pytest.fixture
def instrumented(instrument_with: Callable[..., None]) -> None:
    instrument_with()
