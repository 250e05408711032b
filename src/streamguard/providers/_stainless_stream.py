"""The stream side of the Stainless choke point: a ``Stream``/``AsyncStream`` built while a
request is pending claims its core and is guarded in place (its iteration, ``close`` and
finalisation routed through the driver; the SDK's object and type unchanged).

Floor: ``providers``. Imports ``_stainless_base``; ``_stainless`` (the class-level patches)
calls ``_claim`` and ``_guard`` from here. The per-chunk path (``_Reading``, for a subclass's own
iterator) lives here.
"""

from __future__ import annotations

import contextvars
import copy
import weakref
from typing import Any

from streamguard._engine.core import StreamCore
from streamguard._engine.holdback import async_driver, sync_driver
from streamguard.providers._calls import socket_abort
from streamguard.providers._stainless_base import (
    _HOLD,
    ATTR,
    AfterClose,
    Request,
    StainlessSdk,
    _by_response,
    _pending,
    _request_of,
)

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


class _Closer:
    """What a stream's close reaches: the stream (weakly), its response, core and SDK close."""

    __slots__ = ("after", "core", "hold", "response", "sdk_close")

    def __init__(
        self,
        hold: _Hold,
        response: Any,
        core: StreamCore,
        sdk_close: Any,
        after: AfterClose | None,
    ) -> None:
        self.hold, self.response, self.core, self.sdk_close = hold, response, core, sdk_close
        self.after = after


class _Close(_Closer):
    __slots__ = ()

    def __call__(self) -> None:
        # The socket is shut first only when the close must not wait for the SDK's: a read
        # blocked in another thread wakes now (see abort_closer), and the server stops sending
        # before a background response's cancel request goes out. The consumer's own close
        # is the SDK's, as without StreamGuard (a shutdown on top would double the kernel's
        # work of closing the connection).
        if self.core.in_read or self.after is not None:
            socket_abort(self.response, self.core)()
        stream = self.hold.get()
        try:
            if self.after is not None:
                self.after.sync(self.core)
            if stream is not None:
                self.sdk_close(stream)  # the SDK's own close: its span ends, its hooks run
        finally:
            self.hold.strong = None
            self.response.close()


class _AClose(_Closer):
    __slots__ = ()

    async def __call__(self) -> None:
        # The socket is shut already (the core's abort runs before this is scheduled).
        stream = self.hold.get()
        try:
            if self.after is not None:
                await self.after.aio(self.core)
            if stream is not None:
                await self.sdk_close(stream)
        finally:
            self.hold.strong = None
            await self.response.aclose()


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
    # Without an iterator of its own, the driver calls the SDK's own __next__/__anext__ on the
    # stream that the patched method passes it (never holding the stream: pitfall 12).
    source: Any = None if observed else _source(stream, _own_iterator(stream))
    if is_async:
        core.bind_upstream(
            aclose=_AClose(hold, response, core, originals["close"], request.after_close),
            abort=socket_abort(response, core),
        )
        driver: Any = async_driver(core, source, meter, originals["__anext__"])
    else:
        core.bind_upstream(
            close=_Close(hold, response, core, originals["close"], request.after_close)
        )
        driver = sync_driver(core, source, meter, originals["__next__"])
    stream.__dict__[_HOLD] = hold
    stream.__dict__[ATTR] = driver
    core.runtime.watch(core)
