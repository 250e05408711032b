"""Fixtures of the provider conformance suite: the provider x {sync, async} matrix.

The shared upstream (``up``: a token every 20 ms, ``_harness.INTERVAL``), the test's ``sink``
and ``instrument_with``/``instrumented`` come from ``streamguard.testing.pytest_plugin``; here
``streamguard_options`` gives every ``instrument_with`` this suite's expected answer length.

A test asks for ``case`` (every provider, sync and async), ``async_case`` (async only) or
``provider`` (a provider name, for tests that build their own clients). A provider whose SDK is
not installed, or that has no patcher in ``streamguard.providers.all_patchers()`` yet, is
skipped with the reason.

Every async test runs on each event loop of ``_loops.LOOPS`` (asyncio; uvloop and trio with
``STREAMGUARD_TEST_LOOPS``), by this package's own runner rather than pytest-asyncio's: the
hook below hands the test coroutine to ``_loops.run``. A sync case runs on asyncio only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from streamguard.providers import all_patchers
from streamguard.testing import InMemoryReceiptSink, Upstream

from . import _loops
from ._adapters import ADAPTERS, Adapter
from ._harness import EXPECTED_OUTPUT, Case

MODES = ("sync", "async")
# Fixture names of the SDKs whose provider name is no identifier: ``gemini_case`` (sync and
# async), ``gemini_async_case`` (async only), the same for mistral, and ``gemini_mistral_case``
# (both SDKs, both modes).
SHORT_NAMES = {"gemini": "gcp.gemini", "mistral": "mistral_ai"}
LOOP_PARAM = "sg_loop"


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Iterator[Any]:
    # Inside pytest-asyncio's own wrapper (trylast): the items it would take over are no
    # longer coroutine functions when it looks, so this package's runner runs them instead.
    result = yield
    if not inspect.iscoroutinefunction(obj) or not result:
        return result
    items = []
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, pytest.Function):
            params = item.callspec.params if hasattr(item, "callspec") else {}
            loop = params.get(LOOP_PARAM, "asyncio")
            if loop != "asyncio" and _sync_mode(params):
                continue  # a sync stream runs in a worker thread: no event loop to vary
            item.obj = functools.partial(_loops.run, loop, obj)
        items.append(item)
    return items


def _sync_mode(params: dict[str, object]) -> bool:
    return any(
        isinstance(value, str) and (value.endswith("-sync") or value.startswith("sync-"))
        for value in params.values()
    )


@pytest.fixture(autouse=True, name=LOOP_PARAM)
def _sg_loop(request: pytest.FixtureRequest) -> str:
    """The event loop the test runs on (a parameter when several are asked for)."""
    return str(getattr(request, "param", "asyncio"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _loops.LOOPS != ("asyncio",) and inspect.iscoroutinefunction(metafunc.function):
        metafunc.parametrize(LOOP_PARAM, _loops.LOOPS, ids=list(_loops.LOOPS))
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
    if "gemini_mistral_case" in metafunc.fixturenames:
        combos = [f"{name}-{mode}" for name in SHORT_NAMES.values() for mode in MODES]
        metafunc.parametrize("gemini_mistral_case", combos, indirect=True, ids=combos)
    for short, name in SHORT_NAMES.items():
        if f"{short}_case" in metafunc.fixturenames:
            combos = [f"{name}-{mode}" for mode in MODES]
            metafunc.parametrize(f"{short}_case", combos, indirect=True, ids=combos)
        if f"{short}_async_case" in metafunc.fixturenames:
            metafunc.parametrize(f"{short}_async_case", [f"{name}-async"], indirect=True)
    if "provider" in metafunc.fixturenames:
        names = list(ADAPTERS)
        metafunc.parametrize("provider", names, indirect=True, ids=names)


def adapter_or_skip(name: str, loop: str = "asyncio") -> Adapter:
    adapter = ADAPTERS[name]
    pytest.importorskip(adapter.module, reason=f"the {name} SDK is not installed")
    if adapter.receipt_provider not in {patcher.name for patcher in all_patchers()}:
        pytest.skip(f"StreamGuard has no {name} patcher yet (streamguard.providers.all_patchers)")
    if (missing := adapter.missing()) is not None:
        pytest.skip(f"this {adapter.module} release has no {missing}")
    if loop == "trio" and adapter.asyncio_only:
        pytest.skip(f"{name} runs on asyncio only: {adapter.asyncio_only}")
    return adapter


def _loop_of(request: pytest.FixtureRequest) -> str:
    callspec = getattr(request.node, "callspec", None)
    return str(callspec.params.get(LOOP_PARAM, "asyncio")) if callspec else "asyncio"


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> str:
    return adapter_or_skip(request.param, _loop_of(request)).name


def _case(request: pytest.FixtureRequest, up: Upstream, sink: InMemoryReceiptSink) -> Case:
    # The client is closed by _loops.run, on the test's own loop (Case.aclose_for_test).
    name, mode = request.param.rsplit("-", 1)
    return Case(adapter_or_skip(name, _loop_of(request)), mode == "async", up, sink)


# ``case``: every provider, sync and async; ``async_case``: async only; ``openai_case`` (and
# the other providers' names): one provider, sync and async, for SDK-specific tests.
case = pytest.fixture(_case, name="case")
async_case = pytest.fixture(_case, name="async_case")
openai_case = pytest.fixture(_case, name="openai_case")
anthropic_case = pytest.fixture(_case, name="anthropic_case")
ollama_case = pytest.fixture(_case, name="ollama_case")
gemini_case = pytest.fixture(_case, name="gemini_case")
gemini_async_case = pytest.fixture(_case, name="gemini_async_case")
mistral_case = pytest.fixture(_case, name="mistral_case")
mistral_async_case = pytest.fixture(_case, name="mistral_async_case")
gemini_mistral_case = pytest.fixture(_case, name="gemini_mistral_case")


@pytest.fixture
def streamguard_options() -> dict[str, Any]:
    """What ``instrument_with`` (streamguard.testing.pytest_plugin) starts from here: the
    answer length expected before any history, which receipts' ``prevented_estimate`` uses."""
    return {"expected_output_tokens": EXPECTED_OUTPUT}
