"""Fixtures of the provider conformance suite: one shared upstream, StreamGuard instrumented
per test with an in-memory sink, and the provider x {sync, async} matrix.

A test asks for ``case`` (every provider, sync and async), ``async_case`` (async only) or
``provider`` (a provider name, for tests that build their own clients). A provider whose SDK is
not installed, or that has no patcher in ``streamguard.providers.all_patchers()`` yet, is
skipped with the reason.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import streamguard
from streamguard._receipts.signing import HmacSigner
from streamguard.providers import all_patchers
from streamguard.testing import InMemoryReceiptSink, Upstream

from ._adapters import ADAPTERS, Adapter
from ._harness import EXPECTED_OUTPUT, INTERVAL, Case

MODES = ("sync", "async")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        combos = [f"{name}-{mode}" for name in ADAPTERS for mode in MODES]
        metafunc.parametrize("case", combos, indirect=True, ids=combos)
    if "async_case" in metafunc.fixturenames:
        combos = [f"{name}-async" for name in ADAPTERS]
        metafunc.parametrize("async_case", combos, indirect=True, ids=combos)
    for name in ADAPTERS:
        if f"{name}_case" in metafunc.fixturenames:
            combos = [f"{name}-{mode}" for mode in MODES]
            metafunc.parametrize(f"{name}_case", combos, indirect=True, ids=combos)
    if "provider" in metafunc.fixturenames:
        names = list(ADAPTERS)
        metafunc.parametrize("provider", names, indirect=True, ids=names)


def adapter_or_skip(name: str) -> Adapter:
    adapter = ADAPTERS[name]
    pytest.importorskip(adapter.module, reason=f"the {name} SDK is not installed")
    if name not in {patcher.name for patcher in all_patchers()}:
        pytest.skip(f"StreamGuard has no {name} patcher yet (streamguard.providers.all_patchers)")
    return adapter


@pytest.fixture(scope="package")
def shared_upstream() -> Iterator[Upstream]:
    """One upstream for the whole suite, stopped when it ends (no thread left behind)."""
    with Upstream(token_interval=INTERVAL, default_max_tokens=64) as up:
        yield up


@pytest.fixture
def up(shared_upstream: Upstream) -> Upstream:
    shared_upstream.reset()
    return shared_upstream


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> str:
    return adapter_or_skip(request.param).name


async def _case(
    request: pytest.FixtureRequest, up: Upstream, sink: InMemoryReceiptSink
) -> AsyncIterator[Case]:
    name, mode = request.param.rsplit("-", 1)
    case = Case(adapter_or_skip(name), mode == "async", up, sink)
    yield case
    await case.aclose()


# ``case``: every provider, sync and async; ``async_case``: async only; ``openai_case`` (and
# the other providers' names): one provider, sync and async, for SDK-specific tests.
case = pytest.fixture(_case, name="case")
async_case = pytest.fixture(_case, name="async_case")
openai_case = pytest.fixture(_case, name="openai_case")
anthropic_case = pytest.fixture(_case, name="anthropic_case")
ollama_case = pytest.fixture(_case, name="ollama_case")


@pytest.fixture
def instrument_with(sink: InMemoryReceiptSink) -> Iterator[Callable[..., None]]:
    """``instrument_with(**options)``: ``streamguard.instrument`` with the test's sink and an
    HMAC key. Afterwards it uninstruments (which stops and flushes every stream) and checks that
    no stream got a second receipt late."""
    used = False

    def instrument(**options: Any) -> None:
        nonlocal used
        used = True
        options.setdefault("expected_output_tokens", EXPECTED_OUTPUT)
        streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="test"), **options)

    yield instrument
    if used:
        streamguard.uninstrument()
        per_stream = collections.Counter(r.stream_id for r in sink.receipts)
        twice = {stream: n for stream, n in per_stream.items() if n != 1}
        assert not twice, f"streams with more than one receipt: {twice}"


@pytest.fixture
def instrumented(instrument_with: Callable[..., None]) -> None:
    instrument_with()
