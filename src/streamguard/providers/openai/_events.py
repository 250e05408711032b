"""Reading the openai event streams other than chat and Responses: audio transcriptions, image
generation and edits, Assistants runs (``beta.threads``) and agent sessions (``beta.agents``).

Each meter says which events carry model output (a unit) and where the provider's usage is; any
other event passes through uncounted. A stream cut before its final event keeps the estimate.
"""

from __future__ import annotations

from typing import Any

from streamguard._engine.core import NOT_A_UNIT, StreamCore
from streamguard._money.estimate import estimate_tokens

__all__ = ["AgentSessionMeter", "ImageMeter", "RunMeter", "TranscriptionMeter"]


def _set_usage(core: StreamCore, usage: Any, input_name: str, output_name: str) -> None:
    if usage is None:
        return
    details = getattr(usage, "input_tokens_details", None) or getattr(
        usage, "prompt_tokens_details", None
    )
    core.set_usage(
        input_tokens=getattr(usage, input_name, None),
        output_tokens=getattr(usage, output_name, None),
        cached_input_tokens=getattr(details, "cached_tokens", None),
    )


class TranscriptionMeter:
    """``audio.transcriptions.create(stream=True)``: each ``transcript.text.delta`` is a unit;
    ``transcript.text.done`` carries the usage (``type: "tokens"``; duration-billed models
    send none). Segment events (diarization) repeat text the deltas carried: not units."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, event: Any) -> int:
        kind = getattr(event, "type", None)
        if kind == "transcript.text.delta":
            return estimate_tokens(event.delta) or 1
        if kind == "transcript.text.done":
            usage = getattr(event, "usage", None)
            if getattr(usage, "type", "tokens") == "tokens":
                _set_usage(self.core, usage, "input_tokens", "output_tokens")
            self.core.finish_reasons.append("stop")
        return NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        if getattr(event, "type", None) == "transcript.text.delta":
            return str(event.delta)
        return None


class ImageMeter:
    """``images.generate/edit(stream=True)``: every partial image and the final image are units
    (one estimated token each: their size in tokens is known only from the usage);
    ``image_generation.completed`` / ``image_edit.completed`` carry the usage."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, event: Any) -> int:
        kind = getattr(event, "type", None)
        if not isinstance(kind, str):
            return NOT_A_UNIT
        if kind.endswith(".partial_image"):
            return 1
        if kind.endswith(".completed"):
            _set_usage(self.core, getattr(event, "usage", None), "input_tokens", "output_tokens")
            self.core.finish_reasons.append("completed")
            return 1
        return NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        return None  # images: nothing for a text policy to read


_RUN_ENDS = frozenset(
    {
        "thread.run.completed",
        "thread.run.incomplete",
        "thread.run.failed",
        "thread.run.cancelled",
        "thread.run.expired",
        "thread.run.requires_action",
    }
)


class RunMeter:
    """Assistants runs (``beta.threads.runs`` and ``threads.create_and_run``, their ``stream``
    helpers and ``submit_tool_outputs``): ``thread.message.delta`` (text) and
    ``thread.run.step.delta`` (tool call arguments, code) are units; the run's usage comes with
    the event that ends it (``thread.run.completed``, ``...incomplete``, ``...failed``, ...)."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, event: Any) -> int:
        kind = getattr(event, "event", None)
        if kind == "thread.message.delta":
            return estimate_tokens(self.text(event)) or 1
        if kind == "thread.run.step.delta":
            return _step_tokens(event.data.delta) or 1
        if isinstance(kind, str) and kind.startswith("thread.run.") and ".step." not in kind:
            run = event.data
            core = self.core
            if core.response_id is None:
                core.response_id = getattr(run, "id", None)
                core.response_model = getattr(run, "model", None)
                if core.model is None and core.response_model:
                    core.model = core.response_model  # submit_tool_outputs names no model
            if kind in _RUN_ENDS:
                _set_usage(core, getattr(run, "usage", None), "prompt_tokens", "completion_tokens")
                core.finish_reasons.append(kind.rsplit(".", 1)[-1])
        return NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        if getattr(event, "event", None) != "thread.message.delta":
            return None
        parts = []
        for block in event.data.delta.content or ():
            text = getattr(block, "text", None)
            value = getattr(text, "value", None)
            if isinstance(value, str):
                parts.append(value)
        return "".join(parts) or None


def _step_tokens(delta: Any) -> int:
    details = getattr(delta, "step_details", None)
    tokens = 0
    for call in getattr(details, "tool_calls", None) or ():
        function = getattr(call, "function", None)
        code = getattr(call, "code_interpreter", None)
        tokens += estimate_tokens(getattr(function, "arguments", None))
        tokens += estimate_tokens(getattr(code, "input", None))
    return tokens


_AGENT_TEXT = frozenset(
    {
        "agent.session.turn.output_text.delta",
        "agent.session.turn.reasoning_summary_text.delta",
    }
)


class AgentSessionMeter:
    """Agent sessions (``beta.agents.sessions.create(stream=True)``, ``sessions.events.
    stream``): output and reasoning-summary text deltas are units; each turn's usage comes with
    ``agent.session.turn.completed`` (summed over the turns the stream saw)."""

    __slots__ = ("core", "input_tokens", "output_tokens")

    def __init__(self, core: StreamCore) -> None:
        self.core = core
        self.input_tokens = 0
        self.output_tokens = 0

    def __call__(self, event: Any) -> int:
        kind = getattr(event, "type", None)
        if kind in _AGENT_TEXT:
            return estimate_tokens(event.delta) or 1
        if kind == "agent.session.turn.completed":
            usage = getattr(event, "usage", None)
            if usage is not None:
                self.input_tokens += usage.input_tokens
                self.output_tokens += usage.output_tokens
                self.core.set_usage(
                    input_tokens=self.input_tokens, output_tokens=self.output_tokens
                )
            self.core.finish_reasons.append("completed")
        elif kind == "agent.session.created" and self.core.response_id is None:
            session = getattr(event, "session", None)
            core = self.core
            core.response_id = getattr(session, "id", None)
            model = getattr(getattr(session, "agent", None), "model", None)
            if isinstance(model, str) and model:
                core.response_model = model
                if core.model is None:
                    core.model = model  # the request names it inside ``agent``
        return NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        return str(event.delta) if getattr(event, "type", None) in _AGENT_TEXT else None
