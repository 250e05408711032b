"""Another instrumentation's layer between the SDK and StreamGuard: guarded, or honestly not.

Other instrumentation (OpenLLMetry, OTel's openai-v2, OpenInference) wraps the same SDK methods
and hands the application its own object around the SDK's stream. Installed before StreamGuard,
that wrapper sits inside StreamGuard's patch, so StreamGuard sees the other layer's object, not
the SDK's. Three kinds of layer, each a real wrapper of the SDK's public method (as those
packages install them, with wrapt), never a patch of SDK internals:

- ``proxy``: a wrapt proxy that iterates the stream itself and sees every chunk (OpenLLMetry's
  ``ChatStream`` does this);
- ``delegating``: a wrapt proxy that hands iteration to the stream under it (``__wrapped__``);
- ``opaque``: an object that keeps the stream in an attribute of its own, with no
  ``__wrapped__``: nothing says a stream is inside.

The first two are guarded: stopping the stream closes the upstream at once, with one receipt.
The opaque one is guarded where StreamGuard guards the SDK's stream class in place (openai,
anthropic: the stream is guarded however it is wrapped); elsewhere it gets no receipt, which
would claim what StreamGuard did not see, and one warning. In every case the application reads
what it reads without StreamGuard.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import wrapt

from streamguard.testing import expected_text

from ._harness import CUT, Case, check_consumer_closed

EXHAUST = 20
LAYERS = ("proxy", "delegating", "opaque")
# Where each SDK's public streaming method is, for the adapters' open(): (module, sync, async).
METHODS = {
    # The packages that export the classes on every supported release (the modules moved).
    "openai": ("openai.resources.chat", "Completions.create", "AsyncCompletions.create"),
    "anthropic": ("anthropic.resources.messages", "Messages.create", "AsyncMessages.create"),
    # OpenLLMetry wraps ollama here, under the public methods, where StreamGuard guards it.
    "ollama": ("ollama._client", "Client._request", "AsyncClient._request"),
    "gcp.gemini": (
        "google.genai.models",
        "Models.generate_content_stream",
        "AsyncModels.generate_content_stream",
    ),
    "mistral_ai": ("mistralai.client.chat", "Chat.stream", "Chat.stream_async"),
    # The entry points beyond chat (tests/providers/_adapters.py, their own block).
    "openai.transcriptions": (
        "openai.resources.audio.transcriptions",
        "Transcriptions.create",
        "AsyncTranscriptions.create",
    ),
    "openai.images": ("openai.resources.images", "Images.generate", "AsyncImages.generate"),
    "openai.runs": ("openai.resources.beta.threads.runs.runs", "Runs.create", "AsyncRuns.create"),
    "openai.agents.sessions": (
        "openai.resources.beta.agents.sessions.sessions",
        "Sessions.create",
        "AsyncSessions.create",
    ),
    "anthropic.sessions": (
        "anthropic.resources.beta.sessions.events",
        "Events.stream",
        "AsyncEvents.stream",
    ),
}
# The SDKs whose stream class StreamGuard guards in place: an opaque layer cannot hide it.
IN_PLACE = {
    "openai",
    "anthropic",
    "openai.transcriptions",
    "openai.images",
    "openai.runs",
    "openai.agents.sessions",
    "anthropic.sessions",
}


class SyncProxy(wrapt.ObjectProxy):
    """Iterates the stream itself and keeps what it saw (its telemetry)."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._self_seen: list[Any] = []

    def __iter__(self) -> SyncProxy:
        return self

    def __next__(self) -> Any:
        chunk = next(self.__wrapped__)
        self._self_seen.append(chunk)
        return chunk


class AsyncProxy(wrapt.ObjectProxy):
    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._self_seen: list[Any] = []

    def __aiter__(self) -> AsyncProxy:
        return self

    async def __anext__(self) -> Any:
        chunk = await self.__wrapped__.__anext__()
        self._self_seen.append(chunk)
        return chunk


class Delegating(wrapt.ObjectProxy):
    """Hands iteration to whatever is under it."""

    def __iter__(self) -> Any:
        return iter(self.__wrapped__)

    def __aiter__(self) -> Any:
        return self.__wrapped__.__aiter__()


class Opaque:
    """Keeps the stream to itself: no ``__wrapped__``, not an iterator of its own."""

    def __init__(self, stream: Any) -> None:
        self._inner = stream

    def __iter__(self) -> Iterator[Any]:
        return iter(self._inner)

    def __aiter__(self) -> Any:
        return self._inner.__aiter__()

    def close(self) -> Any:
        return self._inner.close()


def _wrap(kind: str, stream: Any) -> Any:
    if kind == "opaque":
        return Opaque(stream)
    if kind == "delegating":
        return Delegating(stream)
    return AsyncProxy(stream) if hasattr(type(stream), "__anext__") else SyncProxy(stream)


def layer_wrapper(kind: str) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = wrapped(*args, **kwargs)
        if not kwargs.get("stream", True) and "stream" in kwargs:
            return result  # a non-streaming call: nothing to wrap
        if inspect.isawaitable(result):
            return _await_and_wrap(kind, result)
        return _wrap(kind, result)

    return wrapper


async def _await_and_wrap(kind: str, awaitable: Any) -> Any:
    return _wrap(kind, await awaitable)


@pytest.fixture(params=LAYERS)
def layer(request: pytest.FixtureRequest, case: Case) -> Iterator[str]:
    """Another instrumentation's layer on the case's SDK method, installed first (before
    StreamGuard, so inside its patch); removed after StreamGuard's (OTel's unwrap)."""
    kind = str(request.param)
    module_name, *paths = METHODS[case.adapter.name]
    module = importlib.import_module(module_name)
    owners = []
    for path in paths:
        owner_name, _, attr = path.rpartition(".")
        owner = getattr(module, owner_name)
        wrapt.wrap_function_wrapper(owner, attr, layer_wrapper(kind))
        owners.append((owner, attr))
    yield kind
    for owner, attr in owners:
        setattr(owner, attr, vars(owner)[attr].__wrapped__)


def read_all(c: Case, stream: Any) -> list[str]:
    return [c.text(chunk) for chunk in stream if c.text(chunk)]


async def aread_all(c: Case, stream: Any) -> list[str]:
    return [c.text(chunk) async for chunk in stream if c.text(chunk)]


def guarded(c: Case, kind: str) -> bool:
    return kind != "opaque" or c.adapter.name in IN_PLACE


async def test_break_then_drop_under_another_layer_closes_upstream_or_gives_no_receipt(
    case: Case,
    layer: str,
    instrument_with: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    instrument_with()
    caplog.set_level(logging.WARNING, logger="streamguard")

    def sync(c: Case) -> int:
        stream = c.open()
        texts = c.take(stream)
        t_stop = time.monotonic_ns()
        del stream
        assert len(texts) == CUT
        return t_stop

    async def async_(c: Case) -> int:
        stream = await c.open()
        texts = await c.atake(stream)
        t_stop = time.monotonic_ns()
        del stream
        assert len(texts) == CUT
        return t_stop

    t_stop = await case.run(sync, async_)
    if guarded(case, layer):
        record, receipt = await case.settled()
        check_consumer_closed(case, record, receipt, t_stop)
        assert not _unguarded_warnings(caplog)
    else:
        (record,) = case.up.wait_for_requests(1, timeout=3.0)
        record.wait_done(3.0)  # dropping the SDK's generator closes it (no guard needed)
        assert case.sink.receipts == [], "a stream StreamGuard never saw got a receipt"
        (warning,) = _unguarded_warnings(caplog)
        assert "Opaque" in warning and "NOT guarded" in warning


async def test_exhaust_under_another_layer_reads_what_it_reads_without_streamguard(
    case: Case,
    layer: str,
    instrument_with: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="streamguard")

    def sync(c: Case) -> tuple[list[str], Any]:
        stream = c.open(EXHAUST)
        return read_all(c, stream), stream

    async def async_(c: Case) -> tuple[list[str], Any]:
        stream = await c.open(EXHAUST)
        return await aread_all(c, stream), stream

    unguarded, _ = await case.run(sync, async_)
    case.up.reset()
    instrument_with()
    runs = [await case.run(sync, async_) for _ in range(2)]  # two streams: still one warning
    for texts, stream in runs:
        assert texts == unguarded
        assert "".join(texts) == expected_text(EXHAUST)
        if layer == "proxy":
            # The other layer still sees every chunk the application sees.
            assert [case.text(chunk) for chunk in _seen(stream) if case.text(chunk)] == texts
    warnings = _unguarded_warnings(caplog)
    if guarded(case, layer):
        await case.sink.wait_for_async(2, timeout=3.0)
        receipts = case.sink.receipts
        assert [(r.outcome, r.tokens.produced, r.tokens.usage_source) for r in receipts] == [
            ("completed", EXHAUST, "provider")
        ] * 2
        assert not warnings
    else:
        assert case.sink.receipts == [], "a stream StreamGuard never saw got a receipt"
        assert len(warnings) == 1, warnings


def _seen(stream: Any) -> list[Any]:
    seen = getattr(stream, "_self_seen", None)
    assert seen is not None, f"{type(stream).__name__} is not the other layer's proxy"
    return list(seen)


def _unguarded_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "could not guard" in r.getMessage()]
