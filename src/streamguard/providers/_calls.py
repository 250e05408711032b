"""The shape every guarded SDK call has: start a core, make the call, guard what comes back."""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
from collections.abc import Callable
from typing import Any

from streamguard._engine.core import StreamCore
from streamguard._engine.drivers import Meter
from streamguard._engine.reasons import StopReason
from streamguard.providers._base import (
    AsyncStreamGuard,
    SyncStreamGuard,
    discard_core,
    fail_core,
    guarded_call,
)

__all__ = [
    "Guarding",
    "abort_closer",
    "call_guarded",
    "guard_found",
    "is_async_iterator",
    "is_iterator",
]


def abort_closer(response: Any, core: StreamCore) -> Callable[[], None]:
    """Close a sync HTTP response at once, even while another thread is blocked reading it.

    ``response.close()`` from another thread (the watchdog, an ASGI disconnect) does not wake
    a thread blocked in ``recv`` on a silent upstream, and the connection stays open until data
    arrives. So, while a read is in progress and unless the stream completed (its connection
    may be back in the pool), the socket is shut down first: the reader wakes and the server
    sees the disconnect now. With no read in progress (the consumer's own ``close()``),
    ``response.close()`` closes the unfinished connection itself, as the bare SDK's does.
    """
    return _AbortCloser(response, core)


def socket_abort(response: Any, core: StreamCore) -> Callable[[], None]:
    """Shut down the socket under an HTTP response (sync or async) unless the stream completed.

    Safe from any thread: the server sees the disconnect at once, and a pending read (in
    another thread, or awaited on the loop) fails instead of waiting for data.
    """
    return _SocketAbort(response, core)


# Callable objects, not closures: an open stream keeps its closer for its whole life, and a
# two-slot object is 48 bytes where a closure and its cells were about 200.
class _SocketAbort:
    __slots__ = ("core", "response")

    def __init__(self, response: Any, core: StreamCore) -> None:
        self.response = response
        self.core = core

    def __call__(self) -> None:
        response = self.response
        if getattr(response, "is_closed", False) or self.core.stop_reason is _COMPLETED:
            return
        stream = getattr(response, "extensions", {}).get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            shutdown_socket(sock)


class _AbortCloser(_SocketAbort):
    __slots__ = ()

    def __call__(self) -> None:
        if self.core.in_read:
            _SocketAbort.__call__(self)
        self.response.close()


def shutdown_socket(sock: Any) -> None:
    """Shut a connected socket down for both directions, whatever wraps it.

    asyncio's and trio's sockets have ``shutdown``; uvloop's transport sockets refuse it
    (TypeError), so the same is done through a duplicate of the descriptor: ``shutdown`` acts
    on the connection, not on the descriptor, and the duplicate is closed at once.
    """
    with contextlib.suppress(OSError):
        try:
            sock.shutdown(socket.SHUT_RDWR)
            return
        except (TypeError, AttributeError, NotImplementedError):
            pass
        fileno = sock.fileno()
        if fileno < 0:
            return
        dup = socket.socket(fileno=os.dup(fileno))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


_COMPLETED = StopReason.COMPLETED


class Guarding:
    """How to guard what one SDK call returned: the provider says, per result type."""

    def __init__(self, core: StreamCore, meter: Meter) -> None:
        self.core = core
        self.meter = meter
        core.text_of = getattr(meter, "text", None)  # what policies read

    def sync_stream(self, stream: Any, close: Callable[[], object]) -> SyncStreamGuard:
        self.core.bind_upstream(close=close)
        return SyncStreamGuard(stream, self.core, self.meter)

    def async_stream(
        self, stream: Any, aclose: Callable[[], Any], abort: Callable[[], object] | None = None
    ) -> AsyncStreamGuard:
        self.core.bind_upstream(aclose=aclose, abort=abort)
        return AsyncStreamGuard(stream, self.core, self.meter)


def call_guarded(
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    core: StreamCore,
    guard_result: Callable[[Any], Any],
) -> Any:
    """Call the SDK; a failure before any stream exists still gives a ``failed`` receipt.

    A call that returns an awaitable (the async clients, whose methods are not coroutine
    functions: PROVIDERS.md) is guarded when awaited.
    """
    try:
        with guarded_call():
            result = wrapped(*args, **kwargs)
    except BaseException as exc:
        fail_core(core, exc)
        raise
    if inspect.isawaitable(result):
        return _await_and_guard(result, core, guard_result)
    return _guard(result, core, guard_result)


async def _await_and_guard(
    awaitable: Any, core: StreamCore, guard_result: Callable[[Any], Any]
) -> Any:
    try:
        with guarded_call():
            result = await awaitable
    except BaseException as exc:
        fail_core(core, exc)
        raise
    return _guard(result, core, guard_result)


def _guard(result: Any, core: StreamCore, guard_result: Callable[[Any], Any]) -> Any:
    try:
        return guard_result(result)
    except BaseException as exc:
        fail_core(core, exc)
        raise


def guard_found(
    result: Any,
    core: StreamCore,
    is_stream: Callable[[Any], bool],
    guard: Callable[[Any], Any],
) -> Any:
    """Guard the SDK stream in what an SDK call returned, wherever it is; never a false receipt.

    The stream is ``result`` itself, or it is found down the ``__wrapped__`` chain of other
    instrumentation's wrappers (an OpenTelemetry or OpenLLMetry proxy): then the guard goes in
    under the innermost wrapper that holds it, so every wrapper stays where it was, the
    application keeps the object it would have had without StreamGuard, and each layer still
    sees every chunk. A result with no stream StreamGuard recognises (a wrapper that hides its
    stream, a new SDK type) is returned untouched: no receipt, which would claim what
    StreamGuard did not see, and one warning per kind of result.
    """
    if is_stream(result):
        return guard(result)
    holder = result
    for _ in range(_MAX_LAYERS):
        inner = getattr(holder, "__wrapped__", None)
        if inner is None:
            break
        if is_stream(inner):
            try:
                holder.__wrapped__ = inner  # can this layer take the guard under it?
            except Exception:  # a read-only __wrapped__: the stream stays out of reach
                break
            holder.__wrapped__ = guard(inner)
            return result
        holder = inner
    name = type(result).__name__
    discard_core(core, f"the call returned {name}, in which StreamGuard found no stream")
    return result


def is_iterator(result: Any) -> bool:
    """An object whose class iterates, sync or async (a wrapt proxy's class does not: its
    ``next()`` fails, and the iterator it wraps is found through ``__wrapped__``)."""
    cls = type(result)
    return hasattr(cls, "__next__") or hasattr(cls, "__anext__")


def is_async_iterator(result: Any) -> bool:
    return hasattr(type(result), "__anext__")


_MAX_LAYERS = 16  # more wrappers of one stream than any real stack of instrumentation has
