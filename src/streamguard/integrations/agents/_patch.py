"""Patch targets in the OpenAI Agents SDK (``openai-agents``, imported as ``agents``).

``Runner.run_streamed`` drains the model stream from a background task into an unbounded
queue; the application reads ``result.stream_events()``. The model stream's own guard only
sees the background task, which keeps reading whatever the application does, and closing
``stream_events()`` waits for the run to finish. So the integration ties the run's streams
(``RunStreams``: every stream the run's tasks open) to the application's consumption:

- ``stream_events()`` closed, or abandoned (``break``: the loop drops the generator and the
  event loop closes it) before the run ended: the run's streams stop as ``consumer_closed``;
- the consumer's task cancelled while it waits for an event: ``consumer_cancelled``;
- no event taken for ``stall_timeout`` while the run goes on (the events kept but not read,
  the result dropped, ``stream_events()`` never called): ``consumer_stalled``.

Then the run is cancelled with the SDK's own ``result.cancel()``, so it ends as a cancelled
run does. The stream guards underneath stay the only ones that give receipts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from typing import Any

from streamguard._engine.reasons import StopReason
from streamguard._runtime import get_runtime
from streamguard.integrations._lazy import LazyPatcher
from streamguard.integrations._owners import RunStreams

__all__ = ["AgentsPatcher"]

_ATTR = "_streamguard_run"


class _Consumption:
    """The application's side of one streamed run: when it last took an event."""

    __slots__ = ("__weakref__", "result", "run", "t_taken", "waiting")

    def __init__(self, result: Any, run: RunStreams) -> None:
        self.result = weakref.ref(result)
        self.run = run
        self.t_taken = time.monotonic()
        self.waiting = False

    def stop(self, reason: StopReason, detail: str) -> None:
        if self.run.reason is not None:
            return
        self.run.stop(reason, detail)
        result = self.result()
        if result is not None and not result.is_complete:
            with contextlib.suppress(Exception):  # the run is over either way
                result.cancel()


def _watch_stall(consumption: _Consumption, stall: float) -> None:
    """A timer on the run's loop: held weakly, it ends with the run."""
    loop = asyncio.get_running_loop()
    ref = weakref.ref(consumption)
    period = max(stall / 4, 0.01)

    def check() -> None:
        state = ref()
        if state is None or state.run.reason is not None:
            return
        result = state.result()
        if result is None or result.is_complete:
            return
        if not state.waiting and time.monotonic() - state.t_taken > stall:
            state.stop(
                StopReason.CONSUMER_STALLED,
                f"no event of the streamed run was taken for {stall:g} s",
            )
            return
        loop.call_later(period, check)

    loop.call_later(period, check)


def _run_streamed(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    run = RunStreams()
    token = run.set()  # the run's tasks are created now and copy the context
    try:
        result = wrapped(*args, **kwargs)
    finally:
        RunStreams.reset(token)
    try:
        consumption = _Consumption(result, run)
        setattr(result, _ATTR, consumption)
        stall = get_runtime().options.stall_timeout
        if stall is not None and stall > 0:
            _watch_stall(consumption, stall)
    except Exception:  # G7: the run goes on unwatched rather than fail
        from streamguard._runtime import report_fault

        report_fault("agents.run_streamed", RuntimeError("could not watch the streamed run"))
    return result


def _stream_events(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    consumption = getattr(instance, _ATTR, None)
    events = wrapped(*args, **kwargs)
    if not isinstance(consumption, _Consumption):
        return events
    return _events(events, consumption)


async def _events(events: Any, state: _Consumption) -> Any:
    """The SDK's ``stream_events()`` generator, with the application's consumption recorded."""
    finished = False
    try:
        while True:
            state.waiting = True
            try:
                item = await events.__anext__()
            except StopAsyncIteration:
                finished = True
                return
            except asyncio.CancelledError:
                state.stop(
                    StopReason.CONSUMER_CANCELLED, "the task reading the streamed run was cancelled"
                )
                raise
            finally:
                state.waiting = False
                state.t_taken = time.monotonic()
            yield item
    finally:
        if not finished:
            state.stop(
                StopReason.CONSUMER_CLOSED, "stream_events() was closed before the run ended"
            )
            with contextlib.suppress(Exception):  # the SDK's own cleanup; the app has left
                await events.aclose()


class AgentsPatcher(LazyPatcher):
    name = "openai-agents"
    distribution = "openai-agents"
    module = "agents"
    # The newest release is tested (make frameworks); run_streamed and stream_events have
    # had this shape since 0.1.
    supported = ("0.1", "1")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            ("agents.run", "AgentRunner.run_streamed", _run_streamed),
            ("agents.result", "RunResultStreaming.stream_events", _stream_events),
        ]
