"""DSPy's native engine (``dspy.LM(..., engine="auto")`` on DSPy 3.4+, lm15): its streams guarded.

The native engine is DSPy's own HTTP client (a vendored lm15 over stdlib sockets), neither a
vendor SDK nor LiteLLM, so no other StreamGuard guard sees its streams. Every stream it opens
passes through ``LM15Engine.stream`` / ``AsyncLM15Engine.stream`` (DSPy's execution layer
calls them for ``streamify`` and any direct caller may too): the choke point, guarded there,
with the provider and model the engine's own offline routing resolves. The LiteLLM engine
(``engine="litellm"``) is a different class, left to the LiteLLM guard: one stream, one guard.
``complete()`` (non-streaming) is not patched: no stream, no receipt.

The engine's streams are generators that send the request on their first read. Closing a
generator from another thread while it reads raises ("already executing"), so the guard
captures the connection the first read opens (a hook on the lm15 transports' ``_read_head``,
active only during that read) and shuts its socket down from any thread or task; otherwise
it closes the generator, whose ``finally`` chain releases the connection.

Usage comes from the stream itself: lm15 asks OpenAI-style servers for it
(``stream_options.include_usage``) and reports it on the final ``end`` event; the
application's events are unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from typing import Any

from streamguard._engine.core import NOT_A_UNIT, StreamCore
from streamguard._engine.reasons import StopReason
from streamguard._money.estimate import estimate_tokens
from streamguard.providers._base import (
    AsyncStreamGuard,
    SyncStreamGuard,
    in_guarded_call,
    new_core,
)
from streamguard.providers._calls import (
    call_guarded,
    guard_found,
    is_async_iterator,
    is_iterator,
    shutdown_socket,
)

__all__ = ["ENGINE_MODULE", "TRANSPORT_MODULE", "EngineMeter", "targets"]

ENGINE_MODULE = "dspy.clients.engines.lm15_engine"
TRANSPORT_MODULE = "dspy._vendor.lm15.transports"

# lm15's provider ids that name an API surface, not the provider: the receipt names the
# provider as the other guards do (the LiteLLM guard says "openai", "azure").
_PROVIDER_NAMES = {"openai-chat": "openai", "azure-chat": "azure"}
# lm15 reports usage provider-verbatim; Anthropic's input_tokens exclude its cache counters.
_DISJOINT_CACHE = frozenset({"anthropic"})

# The capture box of the stream whose first read is in progress.
_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "streamguard_dspy_capture", default=None
)


class EngineMeter:
    """lm15 stream events: ``start`` (id, model), ``delta`` (text, thinking, tool-call input:
    the units), ``end`` (finish reason and the provider's usage)."""

    __slots__ = ("core", "disjoint_cache")

    def __init__(self, core: StreamCore) -> None:
        self.core = core
        self.disjoint_cache = core.provider in _DISJOINT_CACHE

    def __call__(self, event: Any) -> int:
        kind = getattr(event, "type", None)
        if kind == "delta":
            delta = event.delta
            text = getattr(delta, "text", None) or getattr(delta, "input", None)
            if text:
                return max(1, estimate_tokens(text) + estimate_tokens(getattr(delta, "name", "")))
            return 1 if getattr(delta, "type", None) in _MEDIA else NOT_A_UNIT
        core = self.core
        if kind == "start":
            core.response_id = getattr(event, "id", None)
            core.response_model = getattr(event, "model", None)
        elif kind == "end":
            finish = getattr(event, "finish_reason", None)
            if finish:
                core.finish_reasons.append(str(finish))
            self._usage(getattr(event, "usage", None))
        return NOT_A_UNIT

    def _usage(self, usage: Any) -> None:
        if usage is None:
            return
        read = _int(getattr(usage, "cache_read_tokens", None))
        input_tokens = _int(getattr(usage, "input_tokens", None))
        if input_tokens is not None and self.disjoint_cache:
            written = _int(getattr(usage, "cache_write_tokens", None))
            input_tokens += (read or 0) + (written or 0)
        self.core.set_usage(
            input_tokens=input_tokens,
            output_tokens=_int(getattr(usage, "output_tokens", None)),
            cached_input_tokens=read,
        )

    @staticmethod
    def text(event: Any) -> str | None:
        if getattr(event, "type", None) != "delta":
            return None
        delta = event.delta
        return getattr(delta, "text", None) if getattr(delta, "type", None) == "text" else None


_MEDIA = frozenset({"audio", "image"})


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Capture:
    """Holds the engine's generator and, once its request is sent, the connection under it."""

    __slots__ = ("conn", "core", "generator")

    def __init__(self, generator: Any, core: StreamCore) -> None:
        self.generator = generator
        self.core = core
        self.conn: Any = None

    def _socket(self) -> Any:
        conn = self.conn
        if conn is None or getattr(conn, "closed", False):
            return None
        sock = getattr(conn, "sock", None)  # the sync transport's connection
        if sock is None:  # the async one's: a StreamWriter
            writer = getattr(conn, "writer", None)
            sock = writer.get_extra_info("socket") if writer is not None else None
        return sock

    def abort(self) -> None:
        """Shut the connection down at once, from any thread, unless the stream completed
        (its connection may be back in the pool, serving another request)."""
        if self.core.stop_reason is _COMPLETED:
            return
        sock = self._socket()
        if sock is not None:
            shutdown_socket(sock)

    def close(self) -> None:
        if self.core.in_read:
            self.abort()  # wakes the reader (in another thread); its error ends the generator
        # ValueError: executing in another thread (it ends on the aborted read).
        close = getattr(self.generator, "close", None)
        if close is not None:
            with contextlib.suppress(ValueError):
                close()

    async def aclose(self) -> None:
        self.abort()
        # RuntimeError: running in another task (it ends on the aborted read).
        aclose = getattr(self.generator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):
                await aclose()


_COMPLETED = StopReason.COMPLETED


class _FirstReadCapture:
    """Reads the generator, capturing its connection during the first read."""

    __slots__ = ("box", "driver", "first")

    def __init__(self, box: _Capture) -> None:
        self.box = box
        self.first = True
        # The driver (weakly): after the first read it reads the generator directly.
        self.driver: Any = None

    def __iter__(self) -> _FirstReadCapture:
        return self

    def __next__(self) -> Any:
        if not self.first:
            return next(self.box.generator)
        self.first = False
        token = _capture.set(self.box)
        try:
            return next(self.box.generator)
        finally:
            _capture.reset(token)
            self._hand_over()

    def __aiter__(self) -> _FirstReadCapture:
        return self

    async def __anext__(self) -> Any:
        if not self.first:
            return await self.box.generator.__anext__()
        self.first = False
        token = _capture.set(self.box)
        try:
            return await self.box.generator.__anext__()
        finally:
            _capture.reset(token)
            self._hand_over()

    def _hand_over(self) -> None:
        driver = self.driver() if self.driver is not None else None
        if driver is not None:
            if hasattr(driver, "_ait"):
                driver._ait = self.box.generator
            else:
                driver._it = self.box.generator


def _resolved(engine: Any, request: Any) -> tuple[str, str | None]:
    """The provider and model the engine's routing picks (offline: no network, no key)."""
    model = getattr(request, "model", None)
    try:
        resolution = engine.resolve(model)
    except Exception:  # the engine's own call raises the routing error to the caller
        return "dspy", model if isinstance(model, str) else None
    provider = str(getattr(resolution, "provider", None) or "dspy")
    return _PROVIDER_NAMES.get(provider, provider), getattr(resolution, "model", None) or model


def _prompt(request: Any) -> dict[str, Any]:
    """The request as the runtime's pre-flight estimate reads it (``messages``, ``system``)."""
    messages = []
    for message in getattr(request, "messages", None) or ():
        texts = [getattr(part, "text", None) for part in getattr(message, "parts", None) or ()]
        content = "".join(t for t in texts if isinstance(t, str))
        messages.append({"role": getattr(message, "role", None), "content": content})
    prompt: dict[str, Any] = {"model": getattr(request, "model", None), "messages": messages}
    system = getattr(request, "system", None)
    if isinstance(system, str):
        prompt["system"] = system
    return prompt


def _max_tokens(request: Any) -> int | None:
    return _int(getattr(getattr(request, "config", None), "max_tokens", None))


def _stream(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if in_guarded_call():  # an outer guard (a custom engine delegating to this one) owns it
        return wrapped(*args, **kwargs)
    request = args[0] if args else kwargs.get("request")
    provider, model = _resolved(instance, request)
    core = new_core(provider, _prompt(request), model=model, max_tokens=_max_tokens(request))
    meter = EngineMeter(core)
    core.text_of = meter.text

    def guard(events: Any) -> Any:
        box = _Capture(events, core)
        capture = _FirstReadCapture(box)
        guarded: Any
        if is_async_iterator(events):
            core.bind_upstream(aclose=box.aclose, abort=box.abort)
            guarded = AsyncStreamGuard(events, core, meter, capture)
        else:
            core.bind_upstream(close=box.close)
            guarded = SyncStreamGuard(events, core, meter, capture)
        capture.driver = weakref.ref(guarded._self_driver)
        return guarded

    # Another instrumentation's wrapper around the generator keeps its place: the guard goes
    # under it; a result that is no iterator gets no receipt (guard_found).
    def guard_result(result: Any) -> Any:
        return guard_found(result, core, is_iterator, guard)

    return call_guarded(wrapped, args, kwargs, core, guard_result)


def _read_head(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    box = _capture.get()
    if box is not None and box.conn is None:
        conn = args[0] if args else kwargs.get("conn")
        box.conn = conn
        _server(box.core, getattr(conn, "origin", None))
    return wrapped(*args, **kwargs)


def _server(core: StreamCore, origin: object) -> None:
    # A connection's origin is (scheme, host, port): the server the receipt names.
    if core.server_address is None and isinstance(origin, tuple) and len(origin) == 3:
        _, host, port = origin
        if isinstance(host, str) and isinstance(port, int):
            core.server_address, core.server_port = host, port


def targets() -> list[tuple[str, str, Any]]:
    """The patch targets; a DSPy without the native engine (3.0-3.3) has none of them."""
    return [
        (ENGINE_MODULE, "LM15Engine.stream", _stream),
        (ENGINE_MODULE, "AsyncLM15Engine.stream", _stream),
        (f"{TRANSPORT_MODULE}._sync", "StdlibTransport._read_head", _read_head),
        (f"{TRANSPORT_MODULE}._async", "StdlibAsyncTransport._read_head", _read_head),
    ]
