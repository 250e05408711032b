"""``astream_events(version="v3")``: an ``AsyncChatModelStream`` fed by LangChain's task.

The stream object is a replay buffer with projections (``.text``, ``.reasoning``,
``.tool_calls``, ``.output``, raw events) that any number of cursors read; the task that
drains the model stream starts at the first read (``ensure_started``) and holds the stream
object (its ``_produce`` closure), so LangChain's own objects give no sign of the application
leaving: the projections belong to the stream, and a projection's cursor is dropped at every
``break``, also when the application keeps the stream to read more. So the application is
handed its own handles, which LangChain never holds: ``astream_events`` returns the stream in
a proxy (``_AppStream``), whose projections, cursors and awaits are proxies too, all holding
one ``_Lease``. The integration sees:

- the start callback runs with the stream's scope current, so the task (it copies the
  context) and the model stream it opens belong to the stream (``RunStreams``);
- every cursor's ``__anext__`` and every await of a projection counts as the application
  asking; the task waiting in one of them cancelled while no other read waits:
  ``consumer_cancelled``;
- every handle dropped before the message ended (``break`` out of ``.text`` and the stream
  dropped): the lease's finalizer, ``consumer_closed``;
- ``aclose()`` / ``async with`` exit before the message ended: ``consumer_closed``, then
  LangChain's own ``aclose`` (which cancels its task);
- no read asked for ``stall_timeout`` while the task goes on (``break`` out of ``.text`` with
  the stream kept): ``consumer_stalled``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from streamguard._engine.reasons import StopReason
from streamguard._runtime import report_fault
from streamguard.integrations._consumption import Consumption, watch_stall
from streamguard.integrations._owners import RunStreams, current_run
from streamguard.providers._base import ObjectProxy

__all__ = ["V3_TARGETS"]

_MODULE = "langchain_core.language_models.chat_model_stream"
_CHAT_MODELS = "langchain_core.language_models.chat_models"
_WHAT = 'astream_events(version="v3")'


class _Start:
    """LangChain's start callback, run with the stream's scope current."""

    __slots__ = ("started", "state", "stream", "wrapped")

    def __init__(self, wrapped: Callable[[], Awaitable[None]], stream: Any) -> None:
        self.wrapped = wrapped
        self.stream = weakref.ref(stream)
        self.state = Consumption()
        self.started = False

    async def __call__(self) -> None:
        token = self.state.run.set()  # the task LangChain creates now copies the context
        try:
            await self.wrapped()
        finally:
            RunStreams.reset(token)
        if not self.started:
            self.started = True
            watch_stall(self.state, _WHAT, asyncio.get_running_loop(), self._done)

    def _done(self) -> bool:
        stream = self.stream()
        task = getattr(stream, "_producer_task", None) if stream is not None else None
        return task is None or bool(task.done())


def _set_start(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    callback = args[0] if args else kwargs.get("cb")
    if callback is None or isinstance(callback, _Start) or current_run() is not None:
        return wrapped(*args, **kwargs)
    return wrapped(_Start(callback, instance))


def _state_of(projection: Any) -> Consumption | None:
    start = getattr(projection, "_ensure_started", None)
    return start.state if isinstance(start, _Start) else None


async def _asking(read: Awaitable[Any], state: Consumption) -> Any:
    state.waiting += 1
    try:
        return await read
    except asyncio.CancelledError:
        if state.waiting == 1:  # no other read of this stream is waiting
            state.stop(StopReason.CONSUMER_CANCELLED, f"the task reading {_WHAT} was cancelled")
        raise
    finally:
        state.waiting -= 1
        state.taken()


def _anext(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    state = _state_of(getattr(instance, "_proj", None))
    read = wrapped(*args, **kwargs)
    return read if state is None else _asking(read, state)


def _await_impl(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    state = _state_of(instance)
    read = wrapped(*args, **kwargs)
    return read if state is None else _asking(read, state)


class _Lease:
    """Held by every handle the application has on one stream, and by nothing of LangChain's:
    when it goes, the application has left."""

    __slots__ = ("__weakref__",)


def _dropped(state: Consumption, stream: weakref.ref[Any]) -> None:
    _left(state, stream(), "dropped")


def _left(state: Consumption, stream: Any, how: str) -> None:
    if stream is None or getattr(stream, "done", True):
        state.finished = True  # the message had ended: nothing of the run is left to stop
        return
    state.stop(StopReason.CONSUMER_CLOSED, f"{_WHAT} was {how} before the message ended")


_PROJECTIONS = ("text", "reasoning", "tool_calls", "output")


class _AppStream(ObjectProxy):
    """The ``AsyncChatModelStream`` as the application holds it (see the module docstring)."""

    def __init__(self, stream: Any, state: Consumption) -> None:
        super().__init__(stream)
        lease = _Lease()
        self._self_lease = lease
        self._self_state = state
        # One proxy per projection, as the stream has one projection each; they hold the
        # lease, not this proxy, so dropping the stream's proxy leaves no cycle to collect.
        self._self_projections: dict[str, _AppProjection] = {}
        weakref.finalize(lease, _dropped, state, weakref.ref(stream)).atexit = False

    def _self_projection(self, name: str) -> Any:
        projection = self._self_projections.get(name)
        if projection is None:
            projection = _AppProjection(getattr(self.__wrapped__, name), self._self_lease)
            self._self_projections[name] = projection
        return projection

    @property
    def text(self) -> Any:
        return self._self_projection("text")

    @property
    def reasoning(self) -> Any:
        return self._self_projection("reasoning")

    @property
    def tool_calls(self) -> Any:
        return self._self_projection("tool_calls")

    @property
    def output(self) -> Any:
        return self._self_projection("output")

    # The proxy must own the protocols: a cursor or an await handed out by the wrapped stream
    # would not hold the lease, and the application awaiting it would look gone.
    def __aiter__(self) -> _AppCursor:
        return _AppCursor(self.__wrapped__.__aiter__(), self._self_lease)

    def __await__(self) -> Generator[Any, None, Any]:
        return _holding(self.__wrapped__, self._self_lease).__await__()

    async def aclose(self) -> None:
        """Stops the run's streams unless the message had ended, then LangChain's own
        ``aclose()`` (it cancels its task); a second call is a no-op."""
        _left(self._self_state, self.__wrapped__, "closed")
        await self.__wrapped__.aclose()

    async def __aenter__(self) -> _AppStream:
        return self  # not the wrapped stream: ``async with ... as s`` keeps the lease

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _AppProjection(ObjectProxy):
    """A projection (``.text``, ``.output``, ...) as the application holds it."""

    def __init__(self, projection: Any, lease: _Lease) -> None:
        super().__init__(projection)
        self._self_lease = lease

    def __aiter__(self) -> _AppCursor:
        return _AppCursor(self.__wrapped__.__aiter__(), self._self_lease)

    def __await__(self) -> Generator[Any, None, Any]:
        return _holding(self.__wrapped__, self._self_lease).__await__()


class _AppCursor(ObjectProxy):
    """A projection's cursor as the application holds it."""

    def __init__(self, cursor: Any, lease: _Lease) -> None:
        super().__init__(cursor)
        self._self_lease = lease

    def __aiter__(self) -> _AppCursor:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return _holding(self.__wrapped__.__anext__(), self._self_lease)


async def _holding(read: Awaitable[Any], lease: _Lease) -> Any:
    """``read``; this frame holds ``lease`` while the application waits for it."""
    return await read


def _stream_v3(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _app_stream(wrapped(*args, **kwargs))


async def _app_stream(made: Awaitable[Any]) -> Any:
    stream = await made
    state = _state_of(stream)  # None: part of a run already watched (see _set_start)
    if state is None:
        return stream
    try:
        return _AppStream(stream, state)
    except Exception as exc:  # G7: the stream goes on, its drop told only by the stall timer
        report_fault("langchain.astream_events_v3", exc)
        return stream


V3_TARGETS: list[tuple[str, str, Any]] = [
    (_CHAT_MODELS, "BaseChatModel._achat_model_stream_v3", _stream_v3),
    (_MODULE, "AsyncChatModelStream.set_start", _set_start),
    (_MODULE, "_AsyncProjectionIterator.__anext__", _anext),
    (_MODULE, "AsyncProjection._await_impl", _await_impl),
]
