"""The Stainless-generated SDKs (openai, anthropic): guarded at their two choke points, in place.

Every request of these SDKs goes through ``SyncAPIClient.request`` / ``AsyncAPIClient.request``
(the public methods, ``with_raw_response``, the ``.stream()`` helpers, and callers that skip the
public methods, such as LiteLLM's ``client.post(..., stream_cls=Stream)``), and every SSE stream
is a ``Stream``/``AsyncStream`` built from the HTTP response. StreamGuard hooks both:

- **request** (a wrapt wrapper; no other instrumentation wraps it, so it sits under every
  wrapper of ``create`` in either order): for ``stream=True``, the provider adjusts the body
  (``include_usage``), the core starts before the request is sent (pre-flight budgets), and
  the pending ``Request`` is handed down in a contextvar;
- **the stream classes** (class-level patches): the stream built while a request is pending
  claims its core and is guarded *in place*. The application, the SDK's helpers and any other
  instrumentation hold the SDK's own object (``type(stream) is Stream``, which anthropic 0.x's
  exact-class metaclass requires), while its iteration, ``close`` and finalisation go through
  the guard. A stream never gets two guards, however many layers see it.

Per-stream state lives on the instance (``_streamguard``: the driver). Nothing StreamGuard
keeps elsewhere references the stream strongly (PROVIDERS.md pitfalls 9 and 12): the closer
holds it weakly, and where the SDK's own iterator refers back to its stream (a reference cycle
that only the cyclic GC would break), that iterator is rebuilt on a shallow copy first, as
anthropic 2.x itself does.

The guard's close shuts the socket first (the server sees the disconnect at once), then runs
the SDK's own ``close()``, so the SDK's span ends and its close hooks run.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

from streamguard._engine.core import CLOSED as _CLOSED
from streamguard._engine.core import StreamCore
from streamguard._engine.drivers import AsyncDriver
from streamguard._engine.reasons import StopReason
from streamguard.exceptions import BudgetExceeded
from streamguard.providers._base import Layers, discard_core, fail_core, log
from streamguard.providers._calls import abort_closer, socket_abort
from streamguard.providers._stainless_base import (
    _HOLD,
    ATTR,
    AfterClose,
    Request,
    StainlessSdk,
    _by_response,
    _pending,
    _request_of,
    request_body,
    with_body,
)
from streamguard.providers._stainless_stream import _EXACT, _claim, _guard, _reading

__all__ = [
    "ATTR",
    "AfterClose",
    "Request",
    "StainlessSdk",
    "helper_close",
    "install",
    "raw_response_close",
    "release",
    "request_body",
    "with_body",
]


# --------------------------------------------------------------------------- request side


def _request_hook(sdk: StainlessSdk) -> Any:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started: tuple[Any, Request] | None
        if not kwargs.get("stream"):
            return wrapped(*args, **kwargs)
        outer = _pending.get()
        if outer is not None and not outer.done:
            return wrapped(*args, **kwargs)  # already inside a guarded request
        options = args[1] if len(args) > 1 else kwargs.get("options")
        try:
            started = sdk.start(instance, options)
        except BudgetExceeded:
            raise
        except Exception as exc:  # G7: StreamGuard's fault never breaks the request
            from streamguard._runtime import report_fault

            report_fault(f"{sdk.provider}.request", exc)
            started = None
        if started is None:
            return wrapped(*args, **kwargs)
        new_options, request = started
        if new_options is not options:
            if len(args) > 1:
                args = (args[0], new_options, *args[2:])
            else:
                kwargs = {**kwargs, "options": new_options}
        token = _pending.set(request)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            request.done = True
            fail_core(request.core, exc)
            raise
        finally:
            _pending.reset(token)
        if inspect.isawaitable(result):
            return _await_request(result, request)
        _returned(request, result, is_async=False)
        return result

    return wrapper


async def _await_request(awaitable: Any, request: Request) -> Any:
    token = _pending.set(request)
    try:
        result = await awaitable
    except BaseException as exc:
        request.done = True
        fail_core(request.core, exc)
        raise
    finally:
        _pending.reset(token)
    _returned(request, result, is_async=True)
    return result


def _returned(request: Request, result: Any, *, is_async: bool) -> None:
    """The request call returned: its stream claimed the core, or it is a raw response whose
    ``parse()`` will; anything else gets no receipt (it would be a false one) and a warning."""
    request.done = True
    if request.claimed:
        return
    core = request.core
    http = getattr(result, "http_response", None)
    if http is None:
        discard_core(core, f"the request returned {type(result).__name__}, not a stream")
        return
    _by_response[http] = weakref.ref(request)
    if is_async:
        # Held weakly: a raw response dropped unparsed must be freed at once, as without
        # StreamGuard (anthropic ends its span when the body is collected); its finaliser
        # shuts the socket while the response is still there, and the aclose that follows
        # on the loop finds nothing left to close.
        ref = weakref.ref(http)
        core.bind_upstream(aclose=_WeakAClose(ref), abort=_WeakAbort(ref, core))
    else:
        core.bind_upstream(close=abort_closer(http, core))
    # Dropping the raw response unparsed closes the connection at once.
    weakref.finalize(result, _raw_dropped, request)


class _WeakAbort:
    __slots__ = ("core", "ref")

    def __init__(self, ref: weakref.ref[Any], core: StreamCore) -> None:
        self.ref, self.core = ref, core

    def __call__(self) -> None:
        http = self.ref()
        if http is not None:
            socket_abort(http, self.core)()


class _WeakAClose:
    __slots__ = ("ref",)

    def __init__(self, ref: weakref.ref[Any]) -> None:
        self.ref = ref

    async def __call__(self) -> None:
        http = self.ref()
        if http is not None:
            await http.aclose()


def _raw_dropped(request: Request) -> None:
    core = request.core
    if not request.claimed and core.stop_reason is None:
        core.request_stop(StopReason.CONSUMER_CLOSED, "the raw response was dropped unparsed")


# ------------------------------------------------------------------- the class-level patches


def _sync_methods(cls: type, sdk: StainlessSdk, classes: _Classes) -> None:
    names = ("__init__", "__next__", "__iter__", "close")
    o: dict[str, Any] = {name: vars(cls)[name] for name in names}
    sdk_init, sdk_next, sdk_iter, sdk_close = o.values()
    sdk_del = vars(cls).get("__del__")
    finalize = _finalize  # a closure: a stream collected at interpreter exit outlives globals

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        sdk_init(self, *args, **kwargs)
        _attach(self, sdk, o, classes, False)

    def __next__(self: Any) -> Any:
        driver = self._streamguard
        if driver is None:
            return sdk_next(self)
        return driver.next(self)

    def __iter__(self: Any) -> Any:
        # The guard owns iteration: ``for`` calls __next__ on the stream itself.
        if self._streamguard is None:
            return sdk_iter(self)
        return self

    def close(self: Any) -> None:
        # getattr: a close bound while the patches lived can run after the last guarded stream
        # took them (and the class default) away.
        driver = getattr(self, ATTR, None)
        if driver is None or _reading.get() == id(self):
            sdk_close(self)
            return
        driver.close()  # shuts the socket, then runs the SDK's close; a second call is a no-op

    def __del__(self: Any) -> None:
        finalize(self)
        if sdk_del is not None:
            sdk_del(self)
        if classes.released:
            classes.release(self)

    _install(cls, classes.layers, __init__=__init__, __next__=__next__, __iter__=__iter__)
    _install(cls, classes.layers, close=close)
    classes.layers.replace(cls, "__del__", __del__)


def _async_methods(cls: type, sdk: StainlessSdk, classes: _Classes) -> None:
    names = ("__init__", "__anext__", "__aiter__", "close")
    o: dict[str, Any] = {name: vars(cls)[name] for name in names}
    sdk_init, sdk_anext, sdk_aiter, sdk_close = o.values()
    sdk_del = vars(cls).get("__del__")
    finalize = _finalize  # a closure: a stream collected at interpreter exit outlives globals

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        sdk_init(self, *args, **kwargs)
        _attach(self, sdk, o, classes, True)

    def __anext__(self: Any) -> Any:
        driver = self._streamguard
        if driver is None:
            return sdk_anext(self)
        # The driver's coroutine itself, holding the stream until it is awaited (see there).
        return driver.next(self)

    def __aiter__(self: Any) -> Any:
        if self._streamguard is None:
            return sdk_aiter(self)
        return self

    async def close(self: Any) -> None:
        driver = getattr(self, ATTR, None)  # see the sync close
        if driver is None or _reading.get() == id(self):
            await sdk_close(self)
            return
        await driver.aclose()  # always closes the upstream, even when cancelled

    def __del__(self: Any) -> None:
        finalize(self)
        if sdk_del is not None:
            sdk_del(self)
        if classes.released:
            classes.release(self)

    _install(cls, classes.layers, __init__=__init__, __anext__=__anext__, __aiter__=__aiter__)
    _install(cls, classes.layers, close=close)
    classes.layers.replace(cls, "__del__", __del__)


def _install(cls: type, layers: Layers, **methods: Any) -> None:
    for name, function in methods.items():
        original = vars(cls)[name]
        function.__wrapped__ = original  # other layers' unwrap logic can see through ours
        function.__name__ = getattr(original, "__name__", name)
        function.__qualname__ = getattr(original, "__qualname__", name)
        function.__doc__ = getattr(original, "__doc__", None)
        layers.replace(cls, name, function)
    if ATTR not in vars(cls):
        layers.replace(cls, ATTR, None)


def _attach(
    stream: Any, sdk: StainlessSdk, originals: dict[str, Any], classes: _Classes, is_async: bool
) -> None:
    if classes.released:
        return  # uninstrumented: new streams are the SDK's alone
    try:
        _guard(stream, _claim(stream, sdk), originals, is_async)
        classes.live.add(stream)
    except BudgetExceeded:
        stream.response.close()  # a stream StreamGuard did not see start: nothing was guarded
        raise
    except Exception as exc:  # G7: the stream goes on unguarded, and says so once
        from streamguard._runtime import report_fault

        report_fault(f"{sdk.provider}.stream", exc)


def _finalize(stream: Any) -> None:
    """The application dropped the stream before it ended: close the upstream now."""
    state = stream.__dict__
    driver = state.get(ATTR)
    if driver is None:
        return
    core = driver.core
    if core.stop_reason is not None:
        return
    hold = state.get(_HOLD)
    if hold is not None and hold.ref() not in (None, stream):
        return  # a copy (anthropic iterates a copy of its stream): the stream itself lives on
    try:
        if hold is not None:
            hold.strong = stream  # the SDK's own close runs on it (released once closed)
        core.request_stop(StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended")
    except Exception as exc:
        log.debug("StreamGuard: closing a dropped stream failed: %r", exc)
    finally:
        # A sync close has run by now; an async one releases the stream when it is done.
        if hold is not None and (core._home is None or core.phase >= _CLOSED):
            hold.strong = None


class _Classes:
    """The stream-class patches of one SDK. They outlive ``uninstrument()`` while a stream
    guarded in place is alive (its next read must raise the stop, not touch a closed socket),
    and are removed with the last of them."""

    def __init__(self) -> None:
        self.layers = Layers()
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()
        self.released = False

    def release(self, dying: Any = None) -> None:
        self.released = True
        if all(stream is dying for stream in list(self.live)):
            self.layers.remove_all()
            for provider, classes in list(_classes.items()):
                if classes is self:
                    del _classes[provider]


_classes: dict[str, _Classes] = {}


def install(sdk: StainlessSdk, layers: Layers, streams: Any, base_client: Any) -> None:
    """Patch one Stainless SDK: its request methods (in ``layers``) and its stream classes
    (kept until ``release``: see ``_Classes``)."""
    classes = _classes.get(sdk.provider)
    if classes is not None:  # instrumented again before the last guarded stream was gone
        classes.released = False
    else:
        classes = _classes[sdk.provider] = _Classes()
        _EXACT.update((streams.Stream, streams.AsyncStream))
        _sync_methods(streams.Stream, sdk, classes)
        _async_methods(streams.AsyncStream, sdk, classes)
    layers.wrap(base_client.SyncAPIClient, "request", _request_hook(sdk))
    layers.wrap(base_client.AsyncAPIClient, "request", _request_hook(sdk))


def release(provider: str) -> None:
    """``uninstrument()``: the stream classes are restored now, or with the last stream."""
    classes = _classes.get(provider)
    if classes is not None:
        classes.release()


# --------------------------------------------------------------------------- shared helpers


def helper_close(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A helper (openai's ``ChatCompletionStream``, anthropic 0.x's ``MessageStream``) whose
    ``close()`` closes the HTTP response itself, bypassing its raw stream (PROVIDERS.md
    pitfall 6): stop the raw stream's guard first (it shuts the socket and runs the raw
    stream's SDK close), not through the raw stream's ``close`` attribute: an observer there
    (another instrumentation) sees no close the SDK would not have made itself."""
    raw: Any = getattr(instance, "_raw_stream", None)
    driver = getattr(raw, ATTR, None)
    if driver is not None and not _closes_through_raw(wrapped):
        if isinstance(driver, AsyncDriver):
            return _then(driver.aclose(), wrapped, args, kwargs)
        driver.close()
    return wrapped(*args, **kwargs)


_through_raw: dict[Any, bool] = {}


def _closes_through_raw(close: Any) -> bool:
    """Whether a helper's own ``close`` calls its raw stream's (anthropic 2.x's do): the guard
    sees the close there, and closing the raw stream first as well would close it twice (an
    observer of ``Stream.close``, another instrumentation, would see two closes)."""
    code = getattr(close, "__code__", None)
    known = _through_raw.get(code)
    if known is None:
        try:
            known = "self._raw_stream.close()" in inspect.getsource(close)
        except (OSError, TypeError):  # no source: close the raw stream first, to be sure
            known = False
        _through_raw[code] = known
    return known


async def _then(first: Any, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    await first
    return await wrapped(*args, **kwargs)


def raw_response_close(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Closing a raw response (``with_streaming_response``'s exit) ends its stream."""
    request = _request_of(getattr(instance, "http_response", None))
    core = request.core if request is not None else None
    if core is not None and core.stop_reason is None:
        core.request_stop(StopReason.CONSUMER_CLOSED, "the raw response was closed")
    return wrapped(*args, **kwargs)
