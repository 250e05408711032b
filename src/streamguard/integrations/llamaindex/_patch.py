"""Patch targets in llama-index-core: the chat engines' ``stream_chat`` and ``astream_chat``.

Each returns a ``StreamingAgentChatResponse`` after starting a writer (a thread for
``stream_chat``, a task for ``astream_chat``) that drains the model stream into a queue and
then into the chat memory; the application reads ``response_gen`` / ``async_response_gen()``,
which poll that queue. The model stream's guard only sees the writer, and closing the
application's generator waits for the writer to finish (its ``finally`` joins the thread or
awaits the task): without help the model generates to the end, and a sync ``break`` blocks
the application until it has. So the engine call runs with the run's scope current (the
writer copies the context: llama-index's ``Thread`` and ``asyncio.create_task`` both do), and
the response's queue and writer get thin proxies that see the application's side:

- the application's generator closed or dropped before the answer ended (its ``finally``
  waits for the writer): ``consumer_closed``; the consuming task cancelled:
  ``consumer_cancelled``. Before 0.14 the sync response keeps no handle on its writer and
  ``response_gen`` has no ``finally``: there the generators ``response_gen`` hands out for a
  watched response are wrapped, and their close (or drop) says the same;
- the queue not polled for ``stall_timeout`` while the writer goes on (the generator kept but
  not read, the response dropped, never read): ``consumer_stalled``.

The writer then sees its stream end (or ``StreamCancelled`` for a stall) and finishes as the
engine's own error path does; the stream guards underneath give the one receipt.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from typing import TYPE_CHECKING, Any

from streamguard._engine.reasons import StopReason
from streamguard._runtime import report_fault
from streamguard.integrations._consumption import Consumption, watch_stall
from streamguard.integrations._lazy import LazyPatcher
from streamguard.integrations._owners import RunStreams, current_run
from streamguard.providers._base import ObjectProxy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator, Iterator

__all__ = ["LlamaIndexPatcher"]

_ENGINES = (
    ("simple", "SimpleChatEngine"),
    ("context", "ContextChatEngine"),
    ("condense_plus_context", "CondensePlusContextChatEngine"),
    ("condense_question", "CondenseQuestionChatEngine"),
    ("multi_modal_context", "MultiModalContextChatEngine"),
    ("multi_modal_condense_plus_context", "MultiModalCondensePlusContextChatEngine"),
)


def _left(state: Consumption, response: Any, what: str) -> None:
    """The application's generator ended: finished if the answer had, else it left early."""
    if response is None or getattr(response, "is_done", True):
        state.finished = True
        return
    task = asyncio.current_task() if _has_loop() else None
    if task is not None and task.cancelling():
        state.stop(StopReason.CONSUMER_CANCELLED, f"the task reading {what} was cancelled")
    else:
        state.stop(StopReason.CONSUMER_CLOSED, f"{what} was closed before the answer ended")


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _PolledQueue(ObjectProxy):
    """The response's sync queue: ``response_gen`` polls ``get`` while it waits or reads."""

    def __init__(self, queue: Any, state: Consumption) -> None:
        super().__init__(queue)
        self._self_state = state

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self._self_state.taken()
        return self.__wrapped__.get(*args, **kwargs)


class _AsyncPolledQueue(ObjectProxy):
    """The response's asyncio queue: ``async_response_gen`` waits in ``get``."""

    def __init__(self, queue: Any, state: Consumption) -> None:
        super().__init__(queue)
        self._self_state = state

    def get(self) -> Awaitable[Any]:
        return _counted(self.__wrapped__.get(), self._self_state)


async def _counted(get: Awaitable[Any], state: Consumption) -> Any:
    state.waiting += 1
    try:
        return await get
    finally:
        state.waiting -= 1
        state.taken()


class _WriterThread(ObjectProxy):
    """The writer thread: ``response_gen``'s ``finally`` joins it when the app's loop ends."""

    def __init__(self, thread: Any, state: Consumption, response: Any) -> None:
        super().__init__(thread)
        self._self_state = state
        self._self_response = weakref.ref(response)

    def join(self, *args: Any, **kwargs: Any) -> Any:
        _left(self._self_state, self._self_response(), "response_gen")
        return self.__wrapped__.join(*args, **kwargs)


class _WriterTask(ObjectProxy):
    """The writer task: ``async_response_gen()``'s ``finally`` awaits it."""

    def __init__(self, task: Any, state: Consumption, response: Any) -> None:
        super().__init__(task)
        self._self_state = state
        self._self_response = weakref.ref(response)

    def __await__(self) -> Generator[Any, None, Any]:
        _left(self._self_state, self._self_response(), "async_response_gen()")
        return self.__wrapped__.__await__()  # type: ignore[no-any-return]


def _done(response: Any) -> Any:
    ref = weakref.ref(response)

    def done() -> bool:
        alive = ref()
        return alive is None or bool(getattr(alive, "is_done", True))

    return done


def _watch_sync(response: Any, state: Consumption) -> None:
    if getattr(response, "chat_stream", None) is None:  # answered without streaming the model
        return
    response.queue = _PolledQueue(response.queue, state)
    thread = getattr(response, "write_response_to_history_thread", None)
    if thread is not None:
        response.write_response_to_history_thread = _WriterThread(thread, state, response)
    else:
        # Before 0.14 the response keeps no handle on its writer and response_gen has no
        # finally: the generators it hands out are watched instead (_response_gen).
        vars(response)[_STATE] = state
    watch_stall(state, "response_gen", None, _done(response))


_STATE = "_streamguard_consumption"  # on a response whose generators tell when the app leaves


def _response_gen(fget: Callable[[Any], Any], original: property) -> property:
    """``StreamingAgentChatResponse.response_gen``: on a watched response (llama-index-core
    before 0.14), each generator it hands out says when the application leaves it."""

    def response_gen(self: Any) -> Any:
        gen = fget(self)
        state = vars(self).get(_STATE)
        return gen if state is None else _left_when_closed(gen, state, self)

    return property(response_gen, original.fset, original.fdel, original.__doc__)


def _left_when_closed(gen: Any, state: Consumption, response: Any) -> Iterator[Any]:
    """``gen``; closed or dropped before the answer ended: ``consumer_closed`` at once (what
    0.14's ``finally``, joining the writer, tells ``_WriterThread``)."""
    ended = False
    try:
        yield from gen
        ended = True
    except Exception:
        ended = True  # the writer failed: its stream is over already
        raise
    finally:
        if ended:
            state.finished = True
        else:
            _left(state, response, "response_gen")


def _watch_async(response: Any, state: Consumption) -> None:
    if getattr(response, "achat_stream", None) is None:
        return
    # The writer task has not run yet (it was just created): the queue it will fill is set
    # up here, with the loop's own objects, exactly as the writer would.
    response._ensure_async_setup()
    response.aqueue = _AsyncPolledQueue(response.aqueue, state)
    task = getattr(response, "awrite_response_to_history_task", None)
    if task is not None:  # every supported release keeps it (0.13 too)
        response.awrite_response_to_history_task = _WriterTask(task, state, response)
    watch_stall(state, "async_response_gen()", asyncio.get_running_loop(), _done(response))


def _stream_chat(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if current_run() is not None:  # inside a run already watched: its streams are that run's
        return wrapped(*args, **kwargs)
    state = Consumption()
    token = state.run.set()  # the writer thread is created now and copies the context
    try:
        response = wrapped(*args, **kwargs)
    finally:
        RunStreams.reset(token)
    try:
        _watch_sync(response, state)
    except Exception as exc:  # G7: the answer goes on unwatched rather than fail
        report_fault("llamaindex.stream_chat", exc)
    return response


def _astream_chat(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if current_run() is not None:
        return wrapped(*args, **kwargs)
    return _astream_chat_owned(wrapped(*args, **kwargs))


async def _astream_chat_owned(call: Awaitable[Any]) -> Any:
    state = Consumption()
    token = state.run.set()  # the writer task is created now and copies the context
    try:
        response = await call
    finally:
        RunStreams.reset(token)
    try:
        _watch_async(response, state)
    except Exception as exc:  # G7
        report_fault("llamaindex.astream_chat", exc)
    return response


class LlamaIndexPatcher(LazyPatcher):
    name = "llama-index-core"
    distribution = "llama-index-core"
    module = "llama_index.core"
    # The chat engines drain the model stream on a writer thread/task; the newest 0.14 is
    # tested (make frameworks), 0.13 by make frameworks-oldest.
    supported = ("0.13", "0.15")

    def targets(self) -> list[tuple[str, str, Any]]:
        out: list[tuple[str, str, Any]] = []
        for module, engine in _ENGINES:
            path = f"llama_index.core.chat_engine.{module}"
            out.append((path, f"{engine}.stream_chat", _stream_chat))
            out.append((path, f"{engine}.astream_chat", _astream_chat))
        return out

    def after_patch(self) -> None:
        # Only where the response keeps no handle on its sync writer (before 0.14).
        types = importlib.import_module("llama_index.core.chat_engine.types")
        response = types.StreamingAgentChatResponse
        if "write_response_to_history_thread" in getattr(response, "__dataclass_fields__", {}):
            return
        original = vars(response).get("response_gen")
        if isinstance(original, property) and original.fget is not None:
            self.layers.replace(response, "response_gen", _response_gen(original.fget, original))
