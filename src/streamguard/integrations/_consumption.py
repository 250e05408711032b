"""The application's side of a run that a framework drains in the background.

A framework that reads the model stream on a task or thread of its own and hands the
application a queue (LangChain's ``astream_events``/``astream_log``, LlamaIndex's chat
engines) hides the application's consumption from the stream's guard. An integration keeps
one ``Consumption`` per run: the run's streams (an owner scope, ``RunStreams``), when the
application last asked for an item, and whether it is waiting for one now. It calls ``stop``
when the application leaves (closed, dropped, cancelled); ``watch_stall`` stops the run when
the application neither asks nor waits for ``stall_timeout`` while the run goes on.
``owned_aiter`` / ``owned_iter`` do all of it for a framework that hands the application a
generator and starts its background work when the first item is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from streamguard._engine.loopthread import background_loop
from streamguard._engine.reasons import StopReason
from streamguard._runtime import get_runtime, report_fault
from streamguard.integrations._owners import RunStreams

__all__ = ["Consumption", "owned_aiter", "owned_iter", "watch_stall"]

_SLACK = 0.005  # lateness of a timer that is its granularity, not loop lag


class Consumption:
    """One background run seen from the application. ``stop`` is idempotent and never raises;
    once the run has ``finished`` (the application saw its end) it changes nothing."""

    __slots__ = ("__weakref__", "finished", "on_stop", "run", "t_taken", "waiting")

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.run = RunStreams()
        self.t_taken = time.monotonic()
        self.waiting = 0  # application calls waiting for an item right now
        self.finished = False
        self.on_stop = on_stop  # the framework's own cancel, after the streams are stopped

    def taken(self) -> None:
        self.t_taken = time.monotonic()

    def stop(self, reason: StopReason, detail: str) -> None:
        if self.finished or self.run.reason is not None:
            return
        self.run.stop(reason, detail)
        if self.on_stop is not None:
            with contextlib.suppress(Exception):  # the run is over either way
                self.on_stop()


def watch_stall(
    consumption: Consumption,
    what: str,
    loop: asyncio.AbstractEventLoop | None = None,
    done: Callable[[], bool] | None = None,
) -> None:
    """Stop the run as ``consumer_stalled`` when nothing was taken for ``stall_timeout`` and
    nobody waits. A timer on ``loop`` (the running loop; StreamGuard's background loop for a
    sync application), held weakly: it ends with the run, or when ``done()`` says so."""
    stall = get_runtime().options.stall_timeout
    if stall is None or stall <= 0:
        return
    ref = weakref.ref(consumption)
    period = max(stall / 4, 0.01)
    try:
        on = loop if loop is not None else background_loop()
    except Exception as exc:  # G7, as below
        report_fault("integrations.watch_stall", exc)
        return

    due = time.monotonic() + period

    def check() -> None:
        nonlocal due
        state = ref()
        if state is None or state.finished or state.run.reason is not None:
            return
        if done is not None and done():
            return
        now = time.monotonic()
        # Loop lag is not a stall (as for the engine's stall clock, _engine/looptimers): a
        # loop that ran late could not have let the application ask either.
        late = now - due
        if late > _SLACK:
            state.t_taken += late
        if not state.waiting and now - state.t_taken > stall:
            state.stop(StopReason.CONSUMER_STALLED, f"no item of {what} was taken for {stall:g} s")
            return
        due = now + period
        on.call_later(period, check)

    try:
        if loop is not None:
            loop.call_later(period, check)
        else:
            on.call_soon_threadsafe(on.call_later, period, check)
    except Exception as exc:  # G7: the run goes on without a stall timer rather than fail
        report_fault("integrations.watch_stall", exc)


async def owned_aiter(events: Any, state: Consumption, what: str) -> AsyncIterator[Any]:
    """The framework's async generator ``events``, with the application's consumption recorded.

    Each item is asked for with the run's scope current, so a task the framework creates then
    copies it. Closed or dropped before the end: ``consumer_closed``; the task waiting for an
    item cancelled: ``consumer_cancelled``; then the framework's generator is closed.
    """
    started = False
    try:
        while True:
            if not started:
                started = True
                watch_stall(state, what, asyncio.get_running_loop())
            state.waiting += 1
            token = state.run.set()
            try:
                item = await events.__anext__()
            except StopAsyncIteration:
                state.finished = True
                return
            except asyncio.CancelledError:
                state.stop(StopReason.CONSUMER_CANCELLED, f"the task reading {what} was cancelled")
                raise
            except Exception:
                state.finished = True  # the run failed: its streams are over already
                raise
            finally:
                RunStreams.reset(token)
                state.waiting -= 1
                state.taken()
            yield item
    finally:
        if not state.finished:
            state.stop(StopReason.CONSUMER_CLOSED, f"{what} was closed before the run ended")
            try:
                await events.aclose()  # the framework's own cleanup; the app has left
            except asyncio.CancelledError:
                # The framework's cleanup saw the run's own cancellation (on_stop); only a
                # cancellation of the application's task is the application's to see.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:  # the framework's cleanup failing is not the application's
                pass


def owned_iter(events: Any, state: Consumption, what: str) -> Iterator[Any]:
    """The sync twin of ``owned_aiter`` (its stall timer runs on StreamGuard's own loop)."""
    started = False
    try:
        while True:
            if not started:
                started = True
                watch_stall(state, what)
            state.waiting += 1
            token = state.run.set()  # a thread the framework starts now copies the context
            try:
                item = next(events)
            except StopIteration:
                state.finished = True
                return
            except Exception:
                state.finished = True
                raise
            finally:
                RunStreams.reset(token)
                state.waiting -= 1
                state.taken()
            yield item
    finally:
        if not state.finished:
            state.stop(StopReason.CONSUMER_CLOSED, f"{what} was closed before the run ended")
            with contextlib.suppress(Exception):
                events.close()
