"""Patch targets in langchain-core: ``Runnable.astream_events`` and ``Runnable.astream_log``.

Both start a task that runs the runnable (``astream``) and pumps every callback event into an
unbounded in-memory queue; the application iterates an async generator that reads the queue.
The model stream's guard only sees that task, which keeps reading whatever the application
does: leaving the loop with the generator kept, or an ``astream_log`` generator closed (its
``finally`` waits for the task to finish), let the model generate to the end. So the events
generator is wrapped; while it asks its generator for the next event the run's scope is
current, so the task the generator creates (it copies the context) and every stream the run
opens belong to the run (``RunStreams``). The run's streams stop when:

- the events generator is closed, or dropped after ``break`` (the event loop closes it),
  before the run ended: ``consumer_closed``;
- the task waiting for an event is cancelled: ``consumer_cancelled``;
- no event was asked for ``stall_timeout`` while the run goes on (the generator kept but not
  read): ``consumer_stalled``.

A call made while a run is already current (a runnable that streams events inside another
run, LangChain's own forwarding) is left alone: its streams belong to the outer run.
``astream_events(version="v3")`` returns a typed stream object instead of a generator: its
reads are watched by ``_v3``.
"""

from __future__ import annotations

import inspect
from typing import Any

from streamguard.integrations._consumption import Consumption, owned_aiter
from streamguard.integrations._lazy import LazyPatcher
from streamguard.integrations._owners import current_run
from streamguard.integrations.langchain._v3 import V3_TARGETS

__all__ = ["LangChainPatcher"]


def _events_wrapper(what: str) -> Any:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        events = wrapped(*args, **kwargs)
        if current_run() is not None or not inspect.isasyncgen(events):
            return events  # part of a run already watched, or v3's awaitable stream object
        return owned_aiter(events, Consumption(), what)

    return wrapper


class LangChainPatcher(LazyPatcher):
    name = "langchain-core"
    distribution = "langchain-core"
    module = "langchain_core"
    # astream_events v1/v2 and astream_log have run the runnable in a task of their own since
    # 0.2; the newest 1.x is tested (make frameworks), 1.0 by make frameworks-oldest.
    supported = ("0.3", "2")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            *V3_TARGETS,
            (
                "langchain_core.runnables.base",
                "Runnable.astream_events",
                _events_wrapper("astream_events()"),
            ),
            (
                "langchain_core.runnables.base",
                "Runnable.astream_log",
                _events_wrapper("astream_log()"),
            ),
        ]
