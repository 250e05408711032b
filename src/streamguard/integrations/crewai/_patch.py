"""Patch targets in CrewAI: the chunk generators behind ``Crew(stream=True)``.

``kickoff()`` returns a ``CrewStreamingOutput`` over ``create_chunk_generator``, which starts
a thread that runs the crew (its context copied when the application asks for the first
chunk); the crew's LLM calls emit chunk events that an event-bus handler puts into an
unbounded queue the generator reads, and the generator's ``finally`` joins the thread, so
``close()`` waits for the whole crew. ``kickoff_async()``, ``akickoff()`` and
``kickoff_for_each_async()`` do the same with a task (``create_async_chunk_generator``),
which its ``finally`` cancels; the crew's LLM calls run on a worker thread and go on.

Each generator is wrapped (``owned_iter`` / ``owned_aiter``): its first chunk is asked for
with the run's scope current, so the crew's thread or task and every model stream the crew
opens belong to the run. ``close()`` / ``aclose()`` / ``async with`` exit / the streaming
output dropped: ``consumer_closed``; the task reading it cancelled: ``consumer_cancelled``;
nothing asked for ``stall_timeout``: ``consumer_stalled``. The stream guards underneath give
the one receipt per stream.

CrewAI keeps the streaming output in a holder list that the crew's thread (or task) also
holds until the crew ends, so an output the application dropped would live on: the holder
is made to hold it weakly, and the output is freed, with its generator, when the
application lets go of it.

The crew's own work stops too: CrewAI's ``before_llm_call`` hooks are its way to refuse a
model call, and one hook refuses every call of a run that was stopped, so the crew starts
no new model call (retries included) and ends at its next one with CrewAI's own
``LLMCallBlockedError``.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from streamguard._runtime import report_fault
from streamguard.integrations._consumption import Consumption, owned_aiter, owned_iter
from streamguard.integrations._lazy import LazyPatcher
from streamguard.integrations._owners import current_run

__all__ = ["CrewAIPatcher"]

_WHAT = "the crew's streaming output"
# Set while one wrapper calls CrewAI's generator factory, so a second layer of this patch
# (the factory reached through two module names) passes the call through.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "streamguard_crewai_inside", default=False
)


class _WeakHolder:
    """CrewAI's one-item output holder, holding the streaming output weakly (see above).

    The generator reads it only as ``if holder:`` and ``holder[0]`` when it ends."""

    __slots__ = ("_ref",)

    def __init__(self) -> None:
        self._ref: weakref.ref[Any] | None = None

    def adopt(self, holder: list[Any]) -> None:
        """Take the output out of CrewAI's own holder (the crew's thread holds that list)."""
        if holder and self._ref is None:
            try:
                self._ref = weakref.ref(holder[0])
            except TypeError:  # not weakly referenceable: leave CrewAI's holder as it is
                return
            holder.clear()

    def __len__(self) -> int:
        return 0 if self._ref is None or self._ref() is None else 1

    def __getitem__(self, index: int) -> Any:
        output = None if self._ref is None else self._ref()
        if output is None or index not in (0, -1):
            raise IndexError(index)
        return output


def _adopting(events: Iterator[Any], weak: _WeakHolder, holder: list[Any]) -> Iterator[Any]:
    weak.adopt(holder)
    return (yield from events)


async def _adopting_async(
    events: AsyncIterator[Any], weak: _WeakHolder, holder: list[Any]
) -> AsyncIterator[Any]:
    weak.adopt(holder)
    try:
        async for item in events:
            yield item
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, list[Any]] | None:
    """``(state, run, output_holder)``, as CrewAI passes them (positionally), else None: a
    call this patch does not know passes through unwatched."""
    if kwargs or len(args) != 3 or not isinstance(args[2], list):
        return None
    return args[0], args[1], args[2]


def _started(args: tuple[Any, ...], kwargs: dict[str, Any], wrapped: Any) -> Any:
    """CrewAI's chunk generator started with a weak holder of its streaming output, with the
    crew's original holder: ``(events, weak, holder)``; None when this call is not watched
    (inside a run already, or a call shape this release does not have)."""
    call = _split(args, kwargs)
    if current_run() is not None or _inside.get() or call is None:
        return None
    state, run, holder = call
    weak = _WeakHolder()
    token = _inside.set(True)
    try:
        events = wrapped(state, run, weak)
    finally:
        _inside.reset(token)
    return events, weak, holder


def _chunk_generator(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    started = _started(args, kwargs, wrapped)
    if started is None:
        return wrapped(*args, **kwargs)
    events, weak, holder = started
    try:
        return owned_iter(_adopting(events, weak, holder), _consumption(), _WHAT)
    except Exception as exc:  # G7: the crew goes on unwatched rather than fail
        report_fault("crewai.kickoff", exc)
        return events


def _async_chunk_generator(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    started = _started(args, kwargs, wrapped)
    if started is None:
        return wrapped(*args, **kwargs)
    events, weak, holder = started
    try:
        return owned_aiter(_adopting_async(events, weak, holder), _consumption(), _WHAT)
    except Exception as exc:  # G7
        report_fault("crewai.kickoff_async", exc)
        return events


def _consumption() -> Consumption:
    return Consumption()


def _refuse_stopped_runs(context: Any) -> bool | None:
    """CrewAI's ``before_llm_call`` hook: a run the application left makes no new call."""
    run = current_run()
    if run is not None and run.reason is not None:
        return False
    return None


def _hook_calls(hook: Any, register: bool) -> bool:
    """Register (or unregister) ``hook`` as a global ``before_llm_call`` hook; False where the
    CrewAI release has no such hooks (its model streams are still stopped, not its retries)."""
    try:
        from crewai import hooks
    except ImportError:
        return False
    name = "register_before_llm_call_hook" if register else "unregister_before_llm_call_hook"
    call = getattr(hooks, name, None)
    if call is None:
        return False
    try:
        call(hook)
    except Exception as exc:  # G7: the streams are still stopped without it
        report_fault("crewai.hooks", exc)
        return False
    return True


class CrewAIPatcher(LazyPatcher):
    name = "crewai"
    distribution = "crewai"
    module = "crewai"
    # The newest 1.x is tested (make frameworks-crewai).
    supported = ("1.0", "2")

    _hooked_calls = False

    def apply(self) -> None:
        if self._applied:
            return
        super().apply()
        if self._applied:
            self._hooked_calls = _hook_calls(_refuse_stopped_runs, register=True)

    def unpatch(self) -> None:
        if self._hooked_calls:
            self._hooked_calls = False
            _hook_calls(_refuse_stopped_runs, register=False)
        super().unpatch()

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            ("crewai.crew", "create_chunk_generator", _chunk_generator),
            ("crewai.crew", "create_async_chunk_generator", _async_chunk_generator),
            # kickoff_for_each_async imports it from here when it runs.
            (
                "crewai.utilities.streaming",
                "create_async_chunk_generator",
                _async_chunk_generator,
            ),
        ]
