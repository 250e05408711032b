"""The shape every guarded SDK call has: start a core, make the call, guard what comes back."""

from __future__ import annotations

import contextlib
import contextvars
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
    ObjectProxy,
    SyncStreamGuard,
    fail_core,
    guarded_call,
)

__all__ = ["Guarding", "RawResponseGuard", "abort_closer", "call_guarded", "sdk_result_guard"]


def abort_closer(response: Any, core: StreamCore) -> Callable[[], None]:
    """Close a sync HTTP response at once, even while another thread is blocked reading it.

    ``response.close()`` from another thread (the watchdog, an ASGI disconnect) does not wake
    a thread blocked in ``recv`` on a silent upstream, and the connection stays open until data
    arrives. So, unless the stream completed (its connection may be back in the pool), the
    socket is shut down first: the reader wakes and the server sees the disconnect now.
    """

    def close() -> None:
        socket_abort(response, core)()
        response.close()

    return close


def socket_abort(response: Any, core: StreamCore) -> Callable[[], None]:
    """Shut down the socket under an HTTP response (sync or async) unless the stream completed.

    Safe from any thread: the server sees the disconnect at once, and a pending read (in
    another thread, or awaited on the loop) fails instead of waiting for data.
    """

    def abort() -> None:
        if getattr(response, "is_closed", False) or core.stop_reason is _COMPLETED:
            return
        stream = getattr(response, "extensions", {}).get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            shutdown_socket(sock)

    return abort


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
# True while guarding the result of an awaited SDK call (async client).
_in_async_call: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "streamguard_async_call", default=False
)


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
    token = _in_async_call.set(True)
    try:
        return _guard(result, core, guard_result)
    finally:
        _in_async_call.reset(token)


def _guard(result: Any, core: StreamCore, guard_result: Callable[[Any], Any]) -> Any:
    try:
        return guard_result(result)
    except BaseException as exc:
        fail_core(core, exc)
        raise


class RawResponseGuard(ObjectProxy):
    """``with_raw_response`` / ``with_streaming_response``: the stream is guarded on ``parse()``.

    Until then the raw response owns the upstream: dropping it unparsed closes the connection.
    """

    def __init__(self, wrapped: Any, core: StreamCore, guard_parsed: Callable[[Any], Any]) -> None:
        super().__init__(wrapped)
        self._self_core = core
        self._self_guard_parsed = guard_parsed
        self._self_parsed: Any = None

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        if self._self_parsed is None:
            result = self.__wrapped__.parse(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._parse_async(result)
            self._self_parsed = self._self_guard_parsed(result)
        return self._self_parsed

    async def _parse_async(self, awaitable: Any) -> Any:
        result = await awaitable
        if self._self_parsed is None:
            self._self_parsed = self._self_guard_parsed(result)
        return self._self_parsed

    def close(self) -> Any:
        """Closing the raw response ends the stream (``with_streaming_response``'s exit)."""
        from streamguard._engine.reasons import StopReason

        self._self_core.request_stop(StopReason.CONSUMER_CLOSED, "the raw response was closed")
        return self.__wrapped__.close()

    def __del__(self) -> None:
        core = self._self_core
        if self._self_parsed is None and core.stop_reason is None:
            from streamguard._engine.reasons import StopReason

            core.request_stop(StopReason.CONSUMER_CLOSED, "the raw response was dropped unparsed")


def sdk_result_guard(
    guarding: Guarding,
    *,
    sync_types: tuple[type[Any], ...],
    async_types: tuple[type[Any], ...],
    raw_types: tuple[type[Any], ...] = (),
    async_raw_types: tuple[type[Any], ...] = (),
) -> Callable[[Any], Any]:
    """Guard what an openai-style SDK returns: a Stream (closed through ``.response``), or a
    raw response whose ``parse()`` gives the stream."""

    def guard(result: Any) -> Any:
        # ``result`` is typed Any on purpose: the SDK types are only known at run time.
        if isinstance(result, sync_types):
            return guarding.sync_stream(result, abort_closer(result.response, guarding.core))
        core = guarding.core
        if isinstance(result, async_types):
            abort = socket_abort(result.response, core)
            return guarding.async_stream(result, result.response.aclose, abort)
        if isinstance(result, raw_types + async_raw_types):
            http = result.http_response
            if isinstance(result, async_raw_types) or _in_async_call.get():
                # openai's async client returns a LegacyAPIResponse too: bind the async close.
                core.bind_upstream(aclose=http.aclose, abort=socket_abort(http, core))
            else:
                core.bind_upstream(close=abort_closer(http, core))
            return RawResponseGuard(result, core, guard)
        from streamguard._engine.reasons import StopReason

        # Not a stream after all (a mocked client, a new SDK type): leave it untouched.
        guarding.core.request_stop(StopReason.COMPLETED, f"not a stream: {type(result).__name__}")
        return result

    return guard
