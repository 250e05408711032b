"""Reading anthropic managed-agent session events (``beta.sessions.events.stream()``, its
``sessions.threads.events.stream()`` and ``beta.bedrock.sessions.events.stream()`` twins).

A session runs on Anthropic's side: its event stream is a window onto it, and closing the
stream does not stop the agent (``billing`` rule ``runs_on_server``: a cut prevents nothing).
"""

from __future__ import annotations

from typing import Any

from streamguard._engine.core import NOT_A_UNIT, StreamCore
from streamguard._money.estimate import estimate_tokens

__all__ = ["SessionEventsMeter"]


def _block_text(content: Any) -> str:
    blocks = content if isinstance(content, list) else [content]
    return "".join(t for b in blocks if isinstance(t := getattr(b, "text", None), str))


class SessionEventsMeter:
    """Units: ``event_delta`` fragments (with ``event_deltas``) and ``agent.message`` /
    ``agent.thinking`` events whose text no delta carried. Usage: the sum of the
    ``span.model_request_end`` events' ``model_usage`` (every model request the stream saw);
    ``session.status_idle`` ends a turn (its ``stop_reason`` is the finish reason)."""

    __slots__ = ("cached", "core", "delta_events", "input_tokens", "output_tokens")

    def __init__(self, core: StreamCore) -> None:
        self.core = core
        self.delta_events: set[str] = set()  # events whose text came as deltas
        self.input_tokens = self.output_tokens = self.cached = 0

    def __call__(self, event: Any) -> int:
        kind = getattr(event, "type", None)
        if kind == "event_delta":
            self.delta_events.add(event.event_id)
            return estimate_tokens(self.text(event)) or 1
        if kind in ("agent.message", "agent.thinking"):
            if getattr(event, "id", None) in self.delta_events:
                return NOT_A_UNIT  # the whole event repeats what its deltas carried
            return estimate_tokens(_block_text(getattr(event, "content", None))) or 1
        if kind == "span.model_request_end":
            usage = event.model_usage
            read = usage.cache_read_input_tokens or 0
            self.cached += read
            self.input_tokens += (
                usage.input_tokens + read + (usage.cache_creation_input_tokens or 0)
            )
            self.output_tokens += usage.output_tokens
            self.core.set_usage(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cached_input_tokens=self.cached,
            )
        elif kind == "session.status_idle":
            reason = getattr(getattr(event, "stop_reason", None), "type", None)
            self.core.finish_reasons.append(reason if isinstance(reason, str) else "idle")
        return NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        kind = getattr(event, "type", None)
        if kind == "event_delta":
            return _block_text(getattr(event.delta, "content", None)) or None
        if kind == "agent.message":
            return _block_text(event.content) or None
        return None
