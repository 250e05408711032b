"""Patch targets of the google-genai SDK and how its generators are closed.

``generate_content_stream`` returns a generator (an async generator from ``client.aio``, after
``await``) that sends its request on the first read. Neither can be closed from outside while
it reads, and the async one does not close its connection on ``aclose()`` at all: its HTTP
response sits in a reference cycle inside the SDK that only the cyclic GC breaks
(PROVIDERS.md). So the guard captures the HTTP response itself, with a hook on
``BaseApiClient._request``/``_async_request`` that is active only while this stream reads,
and closes that response: only this stream's connection, never the client's pool, from any
thread or task.

One stream may send more than one request (automatic function calling, continuation hops):
the hook keeps the latest response, and once the stream is stopped it refuses to send another.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from typing import Any

from streamguard._engine.core import StreamCore
from streamguard.exceptions import StreamCancelled
from streamguard.providers._base import (
    AsyncStreamGuard,
    Patcher,
    SyncStreamGuard,
    in_guarded_call,
    new_core,
)
from streamguard.providers._calls import (
    abort_closer,
    call_guarded,
    guard_found,
    is_async_iterator,
    is_iterator,
    socket_abort,
)
from streamguard.providers.gemini._meter import GeminiMeter

__all__ = ["GeminiPatcher"]

_MODELS = "google.genai.models"
_API_CLIENT = "google.genai._api_client"

# The upstream of the stream whose read is in progress (never the guard itself: PROVIDERS.md
# pitfall 12, the HTTP stack may copy this context and keep it).
_reading: contextvars.ContextVar[_Upstream | None] = contextvars.ContextVar(
    "streamguard_gemini_reading", default=None
)


class _Upstream:
    """The SDK's generator and the HTTP response of its current request; closes either."""

    __slots__ = ("closed", "core", "generator", "response")

    def __init__(self, generator: Any, core: StreamCore) -> None:
        self.generator = generator
        self.core = core
        self.response: Any = None  # httpx2/httpx/requests Response, or aiohttp ClientResponse
        self.closed = False

    def before_request(self) -> None:
        """A stopped stream sends nothing more (the SDK retries a hop that broke)."""
        if self.closed:
            core = self.core
            raise StreamCancelled(
                f"StreamGuard stopped stream {core.stream_id} ({core.stop_reason}): it sends "
                "no further request.",
                reason=str(core.stop_reason),
                stream_id=core.stream_id,
            )

    def close(self) -> None:
        """Close the upstream from any thread; the generator only if it never sent a request."""
        self.closed = True
        response = self.response
        if response is not None:
            abort_closer(response, self.core)()  # wakes a reader blocked on a silent upstream
            return
        # ValueError: executing in another thread, its request in flight: the response hook
        # closes the response as soon as it arrives (closed is already set).
        close = getattr(self.generator, "close", None)  # another layer's iterator may have none
        if close is not None:
            with contextlib.suppress(ValueError):
                close()

    def abort(self) -> None:
        """Shut this stream's connection at once from any thread, before ``aclose`` gets to
        run on its loop (which may be blocked, as under ``uninstrument()`` on that loop)."""
        self.closed = True
        response = self.response
        if response is not None:
            socket_abort(response, self.core)()

    async def aclose(self) -> None:
        """Close the upstream on its own loop; see ``close``."""
        self.closed = True
        response = self.response
        if response is not None:
            await _aclose_response(response)
            return
        # RuntimeError: running in another task, its request in flight (see close()).
        aclose = getattr(self.generator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):
                await aclose()


async def _aclose_response(response: Any) -> None:
    aclose = getattr(response, "aclose", None)
    if aclose is not None:
        await aclose()
    else:  # aiohttp.ClientResponse.close() is synchronous
        response.close()


class _Reader:
    """Reads the SDK's generator with its ``_Upstream`` current, so each request it sends
    is captured by the ``_request`` hook."""

    __slots__ = ("upstream",)

    def __init__(self, upstream: _Upstream) -> None:
        self.upstream = upstream

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> Any:
        token = _reading.set(self.upstream)
        try:
            return next(self.upstream.generator)
        finally:
            _reading.reset(token)

    def __aiter__(self) -> _Reader:
        return self

    async def __anext__(self) -> Any:
        token = _reading.set(self.upstream)
        try:
            return await self.upstream.generator.__anext__()
        finally:
            _reading.reset(token)


def _model(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    # "models/gemini-2.0-flash", "publishers/google/models/gemini-2.0-flash": the model name.
    return value.rpartition("models/")[2] if "models/" in value else value


def _max_tokens(config: object) -> int | None:
    if isinstance(config, Mapping):
        value = config.get("max_output_tokens", config.get("maxOutputTokens"))
    else:
        value = getattr(config, "max_output_tokens", None)
    return value if isinstance(value, int) and value > 0 else None


def _generate(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if in_guarded_call():
        return wrapped(*args, **kwargs)
    api = instance._api_client
    options = getattr(api, "_http_options", None)
    core = new_core(
        "gcp.vertex_ai" if getattr(api, "vertexai", False) else "gcp.gemini",
        kwargs,
        operation="chat",
        model=_model(kwargs.get("model")),
        max_tokens=_max_tokens(kwargs.get("config")),
        base_url=getattr(options, "base_url", None),
    )
    meter = GeminiMeter(core)
    core.text_of = meter.text

    def guard(generator: Any) -> Any:
        upstream = _Upstream(generator, core)
        if is_async_iterator(generator):
            core.bind_upstream(aclose=upstream.aclose, abort=upstream.abort)
            return AsyncStreamGuard(generator, core, meter, _Reader(upstream))
        core.bind_upstream(close=upstream.close)
        return SyncStreamGuard(generator, core, meter, _Reader(upstream))

    # Whatever iterator reads the SDK's generator (its own, or another layer's around it), the
    # guard closes the HTTP response it opens: any iterator can be guarded.
    return call_guarded(
        wrapped, args, kwargs, core, lambda result: guard_found(result, core, is_iterator, guard)
    )


def _streamed(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # _request(http_request, http_options=None, stream=False)
    return bool(kwargs["stream"] if "stream" in kwargs else len(args) > 2 and args[2])


def _request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    upstream = _reading.get()
    if upstream is None or not _streamed(args, kwargs):
        return wrapped(*args, **kwargs)
    upstream.before_request()
    result = wrapped(*args, **kwargs)
    upstream.response = result.response_stream
    if upstream.closed:  # stopped while the request was in flight
        upstream.response.close()
    return result


def _async_request(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    upstream = _reading.get()
    if upstream is None or not _streamed(args, kwargs):
        return wrapped(*args, **kwargs)
    return _capture_async(wrapped, args, kwargs, upstream)


async def _capture_async(
    wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any], upstream: _Upstream
) -> Any:
    upstream.before_request()
    result = await wrapped(*args, **kwargs)
    upstream.response = result.response_stream
    if upstream.closed:  # stopped while the request was in flight
        await _aclose_response(upstream.response)
    return result


class GeminiPatcher(Patcher):
    name = "gcp.gemini"
    distribution = "google-genai"
    module = "google.genai"
    # The targets and the private ``_request(http_request, http_options, stream)`` hooks are
    # the same from 2.0 (httpx) to 3.x (httpx2); tested on 2.0.0, 3.0.0 and 3.6.1
    # (tests/providers, make compat). 1.x is untested; 4.x may move the private hooks.
    supported = ("2.0", "4")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            (_MODELS, "Models.generate_content_stream", _generate),
            (_MODELS, "AsyncModels.generate_content_stream", _generate),
            (_API_CLIENT, "BaseApiClient._request", _request),
            (_API_CLIENT, "BaseApiClient._async_request", _async_request),
        ]
