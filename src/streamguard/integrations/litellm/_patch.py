"""Patch targets in LiteLLM: ``CustomStreamWrapper`` guarded in place, and the entry points.

Layering: the LiteLLM guard owns the stream. It is the layer the application touches, so it
sees every stop signal (a ``break``, ``close()``, ``del``, task cancellation, a stall); it
knows the provider and model LiteLLM resolved, and LiteLLM's chunks carry the usage. While a
LiteLLM call runs and while the guard reads, ``in_guarded_call()`` is set, so a vendor-SDK
guard underneath (the ``openai/`` route holds a real ``openai.Stream``) stands aside. Should a
vendor stream arrive guarded anyway (``from litellm import completion`` bound before
``instrument()``, whose call the marker does not cover), the LiteLLM layer defers to that
guard instead: one stream, one guard, one receipt either way.

LiteLLM is imported only by the application (``LazyPatcher``): the patch applies when it is.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import Any

from streamguard._engine.core import StreamCore
from streamguard._engine.holdback import async_driver, sync_driver
from streamguard._engine.reasons import StopReason
from streamguard._runtime import get_runtime
from streamguard.integrations._lazy import LazyPatcher
from streamguard.integrations.litellm._meter import LiteLLMMeter, usage_from_chunks, usage_only
from streamguard.providers._base import (
    ObjectProxy,
    core_of,
    guarded_call,
    in_guarded_call,
    new_core,
)
from streamguard.providers._calls import socket_abort

__all__ = ["LiteLLMPatcher"]

_WRAPPER = "litellm.litellm_core_utils.streaming_handler"
_STATE = "_streamguard_state"
# LiteLLM's own flag (its proxy and harness set it): usage was requested on the caller's
# behalf, so the caller's view is the one without it.
_INJECTED = "_litellm_stream_usage_injected"


class _Upstream:
    """What closes a LiteLLM stream: the HTTP response under its completion stream.

    Holds the completion stream, never the ``CustomStreamWrapper`` the application holds, so
    dropping the wrapper still runs its ``__del__``.
    """

    __slots__ = ("core", "stream")

    def __init__(self, core: StreamCore, stream: Any) -> None:
        self.core = core
        self.stream = stream

    def response(self) -> Any:
        stream = self.stream
        # openai Stream: ``response``; LiteLLM's iterators: ``_response`` or ``http_response``.
        for name in ("response", "_response", "http_response"):
            value = getattr(stream, name, None)
            if value is not None and hasattr(value, "close"):
                return value
        return None

    def close(self) -> None:
        response = self.response()
        if response is not None:
            socket_abort(response, self.core)()
            response.close()
            return
        close = getattr(self.stream, "close", None)
        if callable(close):
            result = close()
            if inspect.iscoroutine(result):
                result.close()

    def abort(self) -> None:
        response = self.response()
        if response is not None:
            socket_abort(response, self.core)()

    async def aclose(self) -> None:
        response = self.response()
        if response is not None and hasattr(response, "aclose"):
            await response.aclose()
        elif response is not None:
            response.close()
        else:
            aclose = getattr(self.stream, "aclose", None)
            if callable(aclose):
                await aclose()


class _State:
    """Per-stream guard state, kept on the ``CustomStreamWrapper`` itself.

    Owning: ``driver`` reads the wrapper through ``core``. Deferring (``driver`` None): ``core``
    is the vendor guard's underneath, or None; the stop signals only this layer sees (the
    application dropping or closing the wrapper) are passed on to it, and ``hide`` drops the
    usage chunk StreamGuard asked LiteLLM for.
    """

    __slots__ = ("core", "driver", "hide", "upstream")

    def __init__(
        self,
        core: StreamCore | None,
        driver: Any = None,
        upstream: _Upstream | None = None,
        hide: bool = False,
    ) -> None:
        self.core = core
        self.driver = driver
        self.upstream = upstream
        self.hide = hide


_PASS = _State(None)


class _Pull:
    """Reads the wrapper's original ``__next__``/``__anext__``; holds it weakly (no cycle)."""

    __slots__ = ("ref", "state", "step")

    def __init__(self, wrapper: Any, step: Any, state: _State) -> None:
        self.ref = weakref.ref(wrapper)
        self.step = step
        self.state = state

    def _wrapper(self) -> Any:
        wrapper = self.ref()
        if wrapper is None:
            raise StopIteration
        return wrapper

    def _fetched(self, wrapper: Any) -> None:
        upstream = self.state.upstream
        if upstream is not None and upstream.stream is None:
            upstream.stream = wrapper.completion_stream

    def __iter__(self) -> _Pull:
        return self

    def __next__(self) -> Any:
        wrapper = self._wrapper()
        try:
            with guarded_call():
                return self.step(wrapper)
        except StopIteration:
            _harvest(self.state, wrapper)
            raise
        finally:
            self._fetched(wrapper)

    def __aiter__(self) -> _Pull:
        return self

    async def __anext__(self) -> Any:
        wrapper = self.ref()
        if wrapper is None:
            raise StopAsyncIteration
        try:
            with guarded_call():
                return await self.step(wrapper)
        except StopAsyncIteration:
            _harvest(self.state, wrapper)
            raise
        finally:
            self._fetched(wrapper)


def _harvest(state: _State, wrapper: Any) -> None:
    if state.core is not None:
        usage_from_chunks(state.core, getattr(wrapper, "chunks", ()) or ())


def _injected(wrapper: Any) -> bool:
    logging_obj = getattr(wrapper, "logging_obj", None)
    return getattr(logging_obj, "stream_usage_injected", False) is True


def _max_tokens(wrapper: Any) -> int | None:
    details = getattr(getattr(wrapper, "logging_obj", None), "model_call_details", None) or {}
    for source in (details.get("optional_params") or {}, details):
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _start(wrapper: Any, step: Any, is_async: bool) -> _State:
    """Begin guarding at the first read: then LiteLLM has resolved provider and model, and
    whether the stream is sync or async is known."""
    if in_guarded_call():
        return _PASS  # an outer guard owns it (a LiteLLM wrapper around another)
    stream = wrapper.completion_stream
    inner = core_of(stream) if stream is not None else None
    if inner is not None:
        return _State(inner, hide=_injected(wrapper))
    hidden = getattr(wrapper, "_hidden_params", None) or {}
    provider = getattr(wrapper, "custom_llm_provider", None) or "litellm"
    request = {
        "model": getattr(wrapper, "model", None),
        "messages": getattr(wrapper, "messages", None) or [],
    }
    try:
        core = new_core(
            str(provider),
            request,
            model=getattr(wrapper, "model", None),
            max_tokens=_max_tokens(wrapper),
            base_url=hidden.get("api_base"),
        )
    except BaseException:
        wrapper.close()  # a budget refused the stream: its request is out, close it now
        raise
    state = _State(core, None, _Upstream(core, stream))
    upstream = state.upstream
    assert upstream is not None
    meter = LiteLLMMeter(core, _injected(wrapper))
    core.text_of = meter.text
    pull = _Pull(wrapper, step, state)
    if is_async:
        core.bind_upstream(
            aclose=upstream.aclose, loop=asyncio.get_running_loop(), abort=upstream.abort
        )
        state.driver = async_driver(core, pull, meter)
    else:
        core.bind_upstream(close=upstream.close)
        state.driver = sync_driver(core, pull, meter)
    core.runtime.watch(core)
    return state


def _state(instance: Any, step: Any, is_async: bool) -> _State:
    state: _State | None = instance.__dict__.get(_STATE)
    if state is None:
        state = _start(instance, step, is_async)
        instance.__dict__[_STATE] = state
    return state


def _next(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    state = _state(instance, wrapped.__func__, False)
    if state.driver is not None:
        return state.driver.next()
    chunk = wrapped(*args, **kwargs)
    while state.hide and usage_only(chunk):
        chunk = wrapped(*args, **kwargs)
    return chunk


def _anext(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    state = _state(instance, wrapped.__func__, True)
    if state.driver is not None:
        return state.driver.next()
    if state.hide:
        return _anext_hiding(wrapped, args, kwargs)
    return wrapped(*args, **kwargs)


async def _anext_hiding(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    chunk = await wrapped(*args, **kwargs)
    while usage_only(chunk):
        chunk = await wrapped(*args, **kwargs)
    return chunk


def _close(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # The guard's stop first (it shuts the socket at once), then LiteLLM's own close, so its
    # bookkeeping and hooks run as they do without StreamGuard.
    # LiteLLM also closes the stream itself at its end, inside a read: that is no stop signal.
    state: _State | None = instance.__dict__.get(_STATE)
    if state is not None and state.core is not None and not state.core.in_read:
        state.core.request_stop(StopReason.CONSUMER_CLOSED, "the LiteLLM stream was closed")
    return wrapped(*args, **kwargs)


async def _aclose_async(wrapped: Any, state: _State | None, args: Any, kwargs: Any) -> Any:
    if state is None or state.core is None or state.core.in_read:
        pass  # not guarded here, or LiteLLM closing the stream itself at its end
    elif state.driver is not None and hasattr(state.driver, "aclose"):
        await state.driver.aclose()
    else:
        state.core.request_stop(StopReason.CONSUMER_CLOSED, "the LiteLLM stream was closed")
    return await wrapped(*args, **kwargs)


def _aclose(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _aclose_async(wrapped, instance.__dict__.get(_STATE), args, kwargs)


def _del(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    state: _State | None = instance.__dict__.get(_STATE)
    core = state.core if state is not None else None
    if core is not None and core.stop_reason is None:
        core.request_stop(StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended")
    return wrapped(*args, **kwargs)


def _with_usage(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Ask LiteLLM for the provider's usage when the caller did not, the way LiteLLM's own
    proxy does; the meter hides the extra usage chunk from the application."""
    if kwargs.get("stream") is not True or "stream_options" in kwargs or _INJECTED in kwargs:
        return kwargs
    if not get_runtime().options.include_usage:
        return kwargs
    return {**kwargs, "stream_options": {"include_usage": True}, _INJECTED: True}


class _Held(ObjectProxy):
    """What ``litellm.completion(stream=True)`` returns: LiteLLM's own ``CustomStreamWrapper``
    (``isinstance`` holds, iteration and every attribute are the wrapper's), plus the one
    signal the wrapper cannot give: the application dropping it. LiteLLM keeps the wrapper in
    a reference cycle (its logging object records it as ``original_response``), so without
    this a stream left by ``break`` and dropped would generate until the cyclic GC ran.
    """

    # Iteration is the wrapper's own (guarded in place); the proxy only forwards it.
    def __iter__(self) -> Any:
        return iter(self.__wrapped__)

    def __next__(self) -> Any:
        return next(self.__wrapped__)

    def __aiter__(self) -> Any:
        return self.__wrapped__.__aiter__()

    def __anext__(self) -> Any:
        return self.__wrapped__.__anext__()

    def __enter__(self) -> Any:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> Any:
        return self.__wrapped__.__exit__(*exc_info)

    async def __aenter__(self) -> Any:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)

    def __del__(self) -> None:
        state: _State | None = self.__wrapped__.__dict__.get(_STATE)
        core = state.core if state is not None else None
        if core is not None and core.stop_reason is None:
            core.request_stop(StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended")


def _held(result: Any) -> Any:
    from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper

    return _Held(result) if type(result) is CustomStreamWrapper else result


def _completion(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs.get("stream") is not True:
        return wrapped(*args, **kwargs)
    with guarded_call():
        return _held(wrapped(*args, **_with_usage(kwargs)))


def _acompletion(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs.get("stream") is not True:
        return wrapped(*args, **kwargs)
    return _marked(wrapped, args, _with_usage(kwargs))


async def _marked(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    with guarded_call():
        return _held(await wrapped(*args, **kwargs))


class LiteLLMPatcher(LazyPatcher):
    name = "litellm"
    distribution = "litellm"
    module = "litellm"
    # The newest 1.x is tested (make frameworks); CustomStreamWrapper and the attributes read
    # here (completion_stream, chunks, custom_llm_provider, model) go back to early 1.x.
    supported = ("1.60", "2")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            (_WRAPPER, "CustomStreamWrapper.__next__", _next),
            (_WRAPPER, "CustomStreamWrapper.__anext__", _anext),
            (_WRAPPER, "CustomStreamWrapper.close", _close),
            (_WRAPPER, "CustomStreamWrapper.aclose", _aclose),
            (_WRAPPER, "CustomStreamWrapper.__del__", _del),
            ("litellm", "completion", _completion),
            ("litellm", "acompletion", _acompletion),
        ]
