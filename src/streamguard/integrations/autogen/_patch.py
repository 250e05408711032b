"""Patch target in AutoGen AgentChat: ``BaseGroupChat.run_stream`` (every team).

A team with its embedded runtime starts that runtime (a background task) inside
``run_stream``; the agents' model calls run in the runtime's tasks and their chunks go to an
unbounded output queue that ``run_stream`` reads. Closing the application's generator waits
for the runtime to go idle, so the model generates to the end first. The generator is
wrapped (``owned_aiter``): the runtime starts while the run's scope is current, so every
model stream of the run belongs to it; closed or dropped early: ``consumer_closed``; the
reading task cancelled: ``consumer_cancelled``; then the run's ``CancellationToken`` (one is
supplied when the application passed none) is cancelled, AutoGen's own way to stop a run, so
the team does not start new model calls. Not read for ``stall_timeout``: ``consumer_stalled``
(the token is left alone: an application that comes back gets the team's own error rather
than a cancellation it did not ask for). A team on an application-owned runtime started
outside ``run_stream`` is outside the scope and not covered.
"""

from __future__ import annotations

from typing import Any

from streamguard._engine.reasons import StopReason
from streamguard.integrations._consumption import Consumption, owned_aiter
from streamguard.integrations._lazy import LazyPatcher
from streamguard.integrations._owners import current_run

__all__ = ["AutoGenPatcher"]


def _run_stream(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if current_run() is not None:  # inside a run already watched: its streams are that run's
        return wrapped(*args, **kwargs)
    token = kwargs.get("cancellation_token")
    if token is None:
        from autogen_core import CancellationToken

        token = CancellationToken()
        kwargs = {**kwargs, "cancellation_token": token}
    events = wrapped(*args, **kwargs)
    state = Consumption()

    def cancel_run() -> None:
        if state.run.reason is not StopReason.CONSUMER_STALLED:
            token.cancel()

    state.on_stop = cancel_run
    return owned_aiter(events, state, "run_stream()")


class AutoGenPatcher(LazyPatcher):
    name = "autogen-agentchat"
    distribution = "autogen-agentchat"
    module = "autogen_agentchat"
    # The newest 0.7 is tested (make frameworks and make frameworks-oldest).
    supported = ("0.7", "0.8")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            (
                "autogen_agentchat.teams._group_chat._base_group_chat",
                "BaseGroupChat.run_stream",
                _run_stream,
            )
        ]
