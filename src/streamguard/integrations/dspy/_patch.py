"""Patch targets in DSPy: ``dspy.streaming.streamify.apply_sync_streaming``, and the native
engine's streams (``_engine``: DSPy 3.4+; an older DSPy has no such engine and no such target).

``streamify(program, async_streaming=False)`` turns the async streamer into a sync generator
by running it on a thread of its own (``asyncio.run``) that puts every item into an unbounded
queue; the application's generator reads the queue and has no ``finally``. Leaving the loop
therefore leaves the thread draining the model stream (LiteLLM's, guarded) to the end. The
sync generator is wrapped (``owned_iter``): its first item is asked for with the run's scope
current, so the thread (DSPy copies the context for it) and every LiteLLM stream the program
opens belong to the run; closed or dropped early: ``consumer_closed``; not read for
``stall_timeout``: ``consumer_stalled``.

The async streamer (the default) needs nothing: its memory stream holds 16 items, so a
program whose reader stopped waits, its LiteLLM stream is no longer read, and that stream's
own guard stops it (stall timer; closing the generator cancels DSPy's task group).
"""

from __future__ import annotations

from typing import Any

from streamguard.integrations._consumption import Consumption, owned_iter
from streamguard.integrations._lazy import LazyPatcher
from streamguard.integrations._owners import current_run
from streamguard.integrations.dspy import _engine

__all__ = ["DSPyPatcher"]

_WHAT = "the streamify(async_streaming=False) generator"


def _apply_sync_streaming(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    events = wrapped(*args, **kwargs)
    if current_run() is not None:  # inside a run already watched: its streams are that run's
        return events
    return owned_iter(events, Consumption(), _WHAT)


class DSPyPatcher(LazyPatcher):
    name = "dspy"
    distribution = "dspy"
    module = "dspy"
    # The newest 3.x is tested (make frameworks), 3.0 by make frameworks-oldest.
    supported = ("3.0", "4")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            ("dspy.streaming.streamify", "apply_sync_streaming", _apply_sync_streaming),
            *_engine.targets(),
        ]
