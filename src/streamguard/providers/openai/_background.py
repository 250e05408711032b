"""openai background responses: ``responses.create(background=True, stream=True)``.

The server generates a background response to the end whether or not the client stays
connected; only ``responses.cancel(id)`` stops it. Closing its stream therefore prevents
nothing: such a stream is billed ``runs_on_server`` (its receipt claims no prevented tokens),
and its receipt's ``background`` attribute says what became of the response:

- ``running``: StreamGuard left it generating (the default for a consumer that went away:
  keeping the response alive across disconnects is what ``background=True`` asks for);
- ``cancelled``: StreamGuard cancelled it after the stop and OpenAI confirmed; the stop then
  prevents generation again (billing ``stops_on_abort``, a prevented estimate);
- ``cancel_failed``: the cancel call raised (the receipt's ``detail`` names the error).

Which stops cancel is the ``cancel_background`` option: ``"policy"`` (default) cancels after
policy and operator stops (budget, content policy, output cap, deadline, ``cancel()``), where
the point of the stop is to end the spend; ``"always"`` after every stop but a completed
stream; ``"never"``. The socket is shut first, so the stop bound (G1) does not wait for the
cancel call, which runs on the stream's own client (sync or async) before the SDK's close and
the receipt.
"""

from __future__ import annotations

from typing import Any

from streamguard._engine.core import StreamCore
from streamguard._engine.reasons import StopReason
from streamguard._money.accounting import RUNS_ON_SERVER, STOPS_ON_ABORT
from streamguard.providers._base import log
from streamguard.providers._stainless import AfterClose

__all__ = ["BackgroundCancel", "mark_background"]

ATTRIBUTE = "background"
#: The stops after which ``cancel_background="policy"`` cancels: the point of these is to end
#: the spend. A consumer that went away, an upstream error and shutdown leave it running.
POLICY_STOPS = frozenset(
    {
        StopReason.BUDGET_EXCEEDED,
        StopReason.CONTENT_POLICY,
        StopReason.MAX_OUTPUT_TOKENS,
        StopReason.DEADLINE_EXCEEDED,
        StopReason.MANUAL,
    }
)
# The cancel runs inside the close: bounded, so a close never hangs on an unreachable API.
_CANCEL_OPTIONS: dict[str, Any] = {"timeout": 10.0, "max_retries": 1}


def mark_background(core: StreamCore) -> None:
    """``core``'s stream is a background response: cutting it prevents nothing by itself."""
    if ATTRIBUTE not in core.attributes:
        core.set_attributes({ATTRIBUTE: "running", "billing": RUNS_ON_SERVER})


class BackgroundCancel(AfterClose):
    """After a Responses stream's socket is shut: cancel it if it is a background response and
    ``cancel_background`` names the stop. Never raises."""

    __slots__ = ("client", "mode")

    def __init__(self, client: Any, mode: str) -> None:
        self.client = client  # the SDK client that opened the stream (not the stream)
        self.mode = mode

    def _target(self, core: StreamCore) -> str | None:
        if core.attributes.get(ATTRIBUTE) != "running" or core.response_id is None:
            return None
        reason = core.stop_reason
        if reason is None or reason == StopReason.COMPLETED:
            return None
        if self.mode == "always" or (self.mode == "policy" and reason in POLICY_STOPS):
            return core.response_id
        return None

    def sync(self, core: StreamCore) -> None:
        response_id = self._target(core)
        if response_id is None:
            return
        try:
            self.client.with_options(**_CANCEL_OPTIONS).responses.cancel(response_id)
        except Exception as exc:
            _failed(core, response_id, exc)
        else:
            _cancelled(core)

    async def aio(self, core: StreamCore) -> None:
        response_id = self._target(core)
        if response_id is None:
            return
        try:
            await self.client.with_options(**_CANCEL_OPTIONS).responses.cancel(response_id)
        except Exception as exc:
            _failed(core, response_id, exc)
        else:
            _cancelled(core)


def _cancelled(core: StreamCore) -> None:
    # The server stopped: the cut prevented the rest.
    core.set_attributes({ATTRIBUTE: "cancelled", "billing": STOPS_ON_ABORT})


def _failed(core: StreamCore, response_id: str, exc: Exception) -> None:
    core.set_attributes({ATTRIBUTE: "cancel_failed"})
    failed = f"cancelling the background response failed ({type(exc).__name__})"
    core.detail = f"{core.detail}; {failed}" if core.detail else failed
    log.warning("StreamGuard could not cancel background response %s: %r", response_id, exc)
