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

import contextvars
import copy
import inspect
import json
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from streamguard._engine.core import CLOSED as _CLOSED
from streamguard._engine.core import StreamCore
from streamguard._engine.drivers import Meter
from streamguard._engine.holdback import async_driver, sync_driver
from streamguard._engine.reasons import StopReason
from streamguard.exceptions import BudgetExceeded
from streamguard.providers._base import Layers, discard_core, fail_core, log, new_core
from streamguard.providers._calls import abort_closer, socket_abort

__all__ = ["ATTR", "Request", "StainlessSdk", "install"]

#: The instance attribute holding a stream's driver (None on the class: not guarded).
ATTR = "_streamguard"
_HOLD = "_streamguard_hold"


class Request:
    """One streaming request, from before it is sent until a stream claims it."""

    __slots__ = ("__weakref__", "claimed", "core", "done", "meter", "stream")

    def __init__(self, core: StreamCore, meter: Callable[[StreamCore], Meter]) -> None:
        self.core = core
        self.meter = meter  # the meter factory for this request's chunks
        self.claimed = False
        self.done = False  # the request call returned: a stale context copy must not claim it
        self.stream: weakref.ref[Any] | None = None  # the stream that holds the guard


_pending: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "streamguard_pending_request", default=None
)
# The Request of each HTTP response: a raw response's (with_raw_response /
# with_streaming_response) until ``parse()`` builds its stream, and a stream's, so that a
# second stream built on the same response (anthropic 0.x's MessageStream does that) takes the
# guard over instead of getting a second one. Both key and value are weak: the value reaches
# back to the key (the core's stop exception's traceback holds the stream's frames, and the
# stream its response), so a strong value would keep every stopped stream alive for good. The
# Request lives as long as what needs it: its stream (``_Hold.request``) or, before ``parse()``,
# the raw response (its finaliser).
_by_response: weakref.WeakKeyDictionary[Any, weakref.ref[Request]] = weakref.WeakKeyDictionary()


def _request_of(response: Any) -> Request | None:
    ref = _by_response.get(response) if response is not None else None
    return ref() if ref is not None else None


class StainlessSdk:
    """What differs between the Stainless SDKs; the provider subpackage fills it in."""

    provider = "sdk"

    def prepare(self, url: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The body to send (a new dict when changed) and whether StreamGuard changed it so that
        the stream carries a chunk the application must not see."""
        return body, False

    def endpoint(self, url: str, hidden: bool) -> tuple[str, Callable[[StreamCore], Meter]]:
        """The operation and the meter factory of a streaming request to ``url``."""
        raise NotImplementedError

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_tokens")
        return value if isinstance(value, int) else None

    def start(self, client: Any, options: Any) -> tuple[Any, Request]:
        """For a streaming request: the options to send and its Request. May raise
        BudgetExceeded, and then nothing is sent."""
        body = request_body(options)
        url = _path(getattr(options, "url", ""))
        new_body, hidden = self.prepare(url, body)
        if new_body is not body:
            options = with_body(options, new_body)
        return options, self._request(url, new_body, client, hidden)

    def adopt(self, stream: Any) -> Request:
        """A Request for a stream built from a response whose request StreamGuard did not see
        (a stream constructed by hand): what the request said, read back from the response."""
        body: dict[str, Any] = {}
        url = ""
        try:
            request = stream.response.request
            url = _path(request.url)
            parsed = json.loads(request.content or b"{}")
            body = parsed if isinstance(parsed, dict) else {}
        except (RuntimeError, AttributeError, ValueError):  # a response with no request
            pass
        return self._request(url, body, getattr(stream, "_client", None), False)

    def _request(self, url: str, body: dict[str, Any], client: Any, hidden: bool) -> Request:
        operation, meter = self.endpoint(url, hidden)
        core = new_core(
            self.provider,
            body,
            operation=operation,
            max_tokens=self.max_tokens(body),
            base_url=getattr(client, "base_url", None),
        )
        return Request(core, meter)


def _path(url: object) -> str:
    return urlsplit(str(url)).path


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
        core.bind_upstream(aclose=http.aclose, abort=socket_abort(http, core))
    else:
        core.bind_upstream(close=abort_closer(http, core))
    # Dropping the raw response unparsed closes the connection at once.
    weakref.finalize(result, _raw_dropped, request)


def _raw_dropped(request: Request) -> None:
    core = request.core
    if not request.claimed and core.stop_reason is None:
        core.request_stop(StopReason.CONSUMER_CLOSED, "the raw response was dropped unparsed")


# ---------------------------------------------------------------------------- stream side


def _claim(stream: Any, sdk: StainlessSdk) -> Request:
    request = _pending.get()
    if request is not None and not request.done and not request.claimed:
        return request
    request = _request_of(getattr(stream, "response", None))
    if request is None:
        return sdk.adopt(stream)
    old = request.stream() if request.stream is not None else None
    if old is not None and old is not stream:
        # The stream built later on the same response is the one that is read: it takes
        # the guard over, and the earlier object becomes the SDK's alone (dropping it is
        # no longer a stop signal).
        old.__dict__[ATTR] = None
        old.__dict__.pop(_HOLD, None)
    return request


class _Hold:
    """How the closer reaches the stream: weakly, and strongly only while its finaliser runs
    (so the SDK's own close still runs for a stream being collected)."""

    __slots__ = ("ref", "request", "strong")

    def __init__(self, stream: Any, request: Request) -> None:
        self.ref = weakref.ref(stream)
        self.strong: Any = None
        self.request = request  # the stream keeps its Request (``_by_response`` holds it weakly)

    def get(self) -> Any:
        return self.strong if self.strong is not None else self.ref()


class _Close:
    __slots__ = ("core", "hold", "response", "sdk_close")

    def __init__(self, hold: _Hold, response: Any, core: StreamCore, sdk_close: Any) -> None:
        self.hold, self.response, self.core, self.sdk_close = hold, response, core, sdk_close

    def __call__(self) -> None:
        socket_abort(self.response, self.core)()
        stream = self.hold.get()
        try:
            if stream is not None:
                self.sdk_close(stream)  # the SDK's own close: its span ends, its hooks run
        finally:
            self.hold.strong = None
            self.response.close()


class _AClose:
    __slots__ = ("hold", "response", "sdk_close")

    def __init__(self, hold: _Hold, response: Any, sdk_close: Any) -> None:
        self.hold, self.response, self.sdk_close = hold, response, sdk_close

    async def __call__(self) -> None:
        stream = self.hold.get()
        try:
            if stream is not None:
                await self.sdk_close(stream)
        finally:
            self.hold.strong = None
            await self.response.aclose()


class _WeakNext:
    """The SDK's own ``__next__`` (anthropic's observer sees every item), reached weakly."""

    __slots__ = ("next", "ref")

    def __init__(self, stream: Any, sdk_next: Any) -> None:
        self.ref = weakref.ref(stream)
        self.next = sdk_next

    def __iter__(self) -> _WeakNext:
        return self

    def __next__(self) -> Any:
        stream = self.ref()
        if stream is None:
            raise StopIteration
        return self.next(stream)


class _WeakANext:
    __slots__ = ("anext", "ref")

    def __init__(self, stream: Any, sdk_anext: Any) -> None:
        self.ref = weakref.ref(stream)
        self.anext = sdk_anext

    def __aiter__(self) -> _WeakANext:
        return self

    def __anext__(self) -> Any:
        stream = self.ref()
        if stream is None:
            raise StopAsyncIteration
        return self.anext(stream)


def _own_iterator(stream: Any) -> Any:
    """The SDK's iterator of ``stream``, rebuilt on a shallow copy when it refers back to the
    stream (then dropping the stream frees it at once instead of at the next cyclic GC)."""
    it = stream.__dict__.get("_iterator")
    frame = getattr(it, "gi_frame", None) or getattr(it, "ag_frame", None)
    if frame is None or frame.f_locals.get("self") is not stream:
        return it  # not a cycle
    if type(stream) in _EXACT:
        twin = copy.copy(stream)
        twin.__dict__.pop("_iterator", None)
    else:
        # A subclass keeps state of its own, set later too (its __init__ after ours, cached
        # properties such as openai's AgentSessionEventStream._collection): the twin shares
        # the stream's very __dict__, so both see one state.
        twin = object.__new__(type(stream))
        twin.__dict__ = stream.__dict__
    fresh = twin.__stream__()  # the old one never started: dropping it runs nothing
    stream.__dict__["_iterator"] = fresh
    return fresh


_EXACT: set[type] = set()  # the SDKs' own Stream and AsyncStream classes

# The stream (its id: nothing here may hold it, pitfall 12) whose SDK iterator the guard is
# reading in this context. A subclass's iterator may close its own stream when it ends
# (openai's AgentSessionEventStream does, in a ``finally``): that close is the SDK's end of the
# stream, not the consumer's, and goes to the SDK's close; the guard then sees the end itself.
_reading: contextvars.ContextVar[int] = contextvars.ContextVar("streamguard_reading", default=0)


class _Reading:
    """A subclass's own iterator, read with ``_reading`` set to its stream."""

    __slots__ = ("it", "key")

    def __init__(self, stream: Any, it: Any) -> None:
        self.it, self.key = it, id(stream)

    def __iter__(self) -> _Reading:
        return self

    def __next__(self) -> Any:
        token = _reading.set(self.key)
        try:
            return next(self.it)
        finally:
            _reading.reset(token)

    def __aiter__(self) -> _Reading:
        return self

    async def __anext__(self) -> Any:
        token = _reading.set(self.key)
        try:
            return await self.it.__anext__()
        finally:
            _reading.reset(token)


def _source(stream: Any, it: Any) -> Any:
    if it is None or type(stream) in _EXACT:
        return it
    frame = getattr(it, "gi_frame", None) or getattr(it, "ag_frame", None)
    owner = frame.f_locals.get("self", stream) if frame is not None else stream
    return _Reading(owner, it)  # the object the iterator runs on (a twin: _own_iterator)


def _guard(stream: Any, request: Request, originals: dict[str, Any], is_async: bool) -> None:
    core = request.core
    meter = request.meter(core)
    core.text_of = getattr(meter, "text", None)
    request.claimed = True
    request.stream = weakref.ref(stream)
    response = stream.response
    _by_response[response] = weakref.ref(request)
    hold = _Hold(stream, request)
    observed = hasattr(type(stream), "_observer")  # anthropic: the SDK's __next__ feeds its span
    if is_async:
        source: Any = None if observed else _source(stream, _own_iterator(stream))
        if source is None:
            source = _WeakANext(stream, originals["__anext__"])
        core.bind_upstream(
            aclose=_AClose(hold, response, originals["close"]),
            abort=socket_abort(response, core),
        )
        driver: Any = async_driver(core, source, meter)
    else:
        source = None if observed else _source(stream, _own_iterator(stream))
        if source is None:
            source = _WeakNext(stream, originals["__next__"])
        core.bind_upstream(close=_Close(hold, response, core, originals["close"]))
        driver = sync_driver(core, source, meter)
    stream.__dict__[_HOLD] = hold
    stream.__dict__[ATTR] = driver
    core.runtime.watch(core)


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
        return driver.next()

    def __iter__(self: Any) -> Any:
        # The guard owns iteration: ``for`` calls __next__ on the stream itself.
        if self._streamguard is None:
            return sdk_iter(self)
        return self

    def close(self: Any) -> None:
        driver = self._streamguard
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
        return driver.next()  # the driver's coroutine itself: one frame less per chunk

    def __aiter__(self: Any) -> Any:
        if self._streamguard is None:
            return sdk_aiter(self)
        return self

    async def close(self: Any) -> None:
        driver = self._streamguard
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
    pitfall 6): close the raw stream through its guard first."""
    raw: Any = getattr(instance, "_raw_stream", None)
    if getattr(raw, ATTR, None) is not None:
        result = raw.close()
        if inspect.isawaitable(result):
            return _then(result, wrapped, args, kwargs)
    return wrapped(*args, **kwargs)


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


def request_body(options: Any) -> dict[str, Any]:
    body = getattr(options, "json_data", None)
    return body if isinstance(body, dict) else {}


def with_body(options: Any, body: dict[str, Any]) -> Any:
    """A copy of the request options with a new JSON body (the caller's objects untouched)."""
    new = copy.copy(options)
    new.json_data = body
    return new
