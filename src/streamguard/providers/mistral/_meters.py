"""Reading mistralai events: which carry model output, and where usage is."""

from __future__ import annotations

import json
from typing import Any

from streamguard._engine.core import NOT_A_UNIT, StreamCore
from streamguard._money.estimate import estimate_tokens

__all__ = ["CompletionMeter", "ConversationMeter"]


def _chunk_text(chunk: Any, *, thinking: bool) -> str:
    """The text of one content chunk: ``TextChunk.text``; ``ThinkChunk.thinking`` if asked."""
    text = getattr(chunk, "text", None)
    if isinstance(text, str):
        return text
    if thinking:
        parts = getattr(chunk, "thinking", None)
        if isinstance(parts, list):
            return "".join(_chunk_text(part, thinking=True) for part in parts)
    return ""


def _content_text(content: Any, *, thinking: bool) -> str:
    """A delta's content: a string, a list of chunks, one chunk, or unset."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_chunk_text(chunk, thinking=thinking) for chunk in content)
    if content:
        return _chunk_text(content, thinking=thinking)
    return ""


def _arguments_tokens(name: object, arguments: object) -> int:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, default=str) if arguments else ""
    return max(
        1, estimate_tokens(arguments) + estimate_tokens(name if isinstance(name, str) else "")
    )


class CompletionMeter:
    """``CompletionEvent`` (chat, FIM and agents completions): a chunk whose delta has content
    or tool calls is a unit; the final chunk carries ``usage`` and the finish reason."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, event: Any) -> int:
        chunk = event.data
        core = self.core
        if core.response_id is None:
            core.response_id = chunk.id
            core.response_model = chunk.model
        usage = chunk.usage
        if usage is not None:
            details = (getattr(usage, "model_extra", None) or {}).get("prompt_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            core.set_usage(
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                cached_input_tokens=cached if isinstance(cached, int) else None,
            )
        if not chunk.choices:
            return NOT_A_UNIT
        choice = chunk.choices[0]
        if choice.finish_reason:
            core.finish_reasons.append(str(choice.finish_reason))
        delta = choice.delta
        content = delta.content
        # A list (pydantic validates it to one) or the SDK's UNSET/None: testing its type
        # skips UNSET's __bool__, a Python call per chunk.
        tool_calls = delta.tool_calls
        if type(tool_calls) is not list:
            tool_calls = None
        if type(content) is str:  # the common case, inlined
            if not tool_calls:
                return (len(content) + 2) >> 2 or 1 if content else NOT_A_UNIT
            tokens = estimate_tokens(content)
        else:
            tokens = estimate_tokens(_content_text(content, thinking=True))
        if tool_calls:
            for call in tool_calls:
                tokens += _arguments_tokens(call.function.name, call.function.arguments)
        return tokens if tokens else NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        choices = event.data.choices
        if not choices:
            return None
        return _content_text(choices[0].delta.content, thinking=False) or None


class ConversationMeter:
    """``ConversationEvents`` (the conversations API): ``message.output.delta`` and the
    function-call deltas are units; ``conversation.response.done`` carries the usage."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, event: Any) -> int:
        data = event.data
        kind = getattr(data, "type", None)
        core = self.core
        if kind == "message.output.delta":
            model = data.model
            if isinstance(model, str) and core.response_model is None:
                core.response_model = model
            tokens = estimate_tokens(_content_text(data.content, thinking=True))
            return tokens if tokens else NOT_A_UNIT
        if kind in ("function.call.delta", "tool.execution.delta"):
            return _arguments_tokens(data.name, data.arguments)
        if kind == "conversation.response.started":
            core.response_id = data.conversation_id
        elif kind == "conversation.response.done":
            usage = data.usage
            core.set_usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)
        elif kind == "conversation.response.error":
            core.finish_reasons.append("error")
        return NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        data = event.data
        if getattr(data, "type", None) != "message.output.delta":
            return None
        return _content_text(data.content, thinking=False) or None
