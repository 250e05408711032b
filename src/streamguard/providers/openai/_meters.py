"""Reading openai chunks: which carry model output, and where usage is."""

from __future__ import annotations

from typing import Any

from streamguard._engine.core import HIDE, NOT_A_UNIT, StreamCore
from streamguard._money.estimate import estimate_tokens
from streamguard.providers.openai._background import mark_background

__all__ = ["AutoMeter", "ChatMeter", "ResponsesMeter"]


class ChatMeter:
    """Chat completion chunks (and legacy completion chunks, whose choices carry ``text``).

    The usage chunk (``choices == []``) replaces the estimate. It is hidden from the
    application only when it is the one StreamGuard caused: StreamGuard injected
    ``include_usage`` (``hide_usage``) and the server showed it honoured that request, as OpenAI
    does, with an explicit ``"usage": null`` on the chunks before. A server that sends usage
    unasked (the application would have seen it without StreamGuard) keeps it visible.
    """

    __slots__ = ("core", "hide_usage")

    def __init__(self, core: StreamCore, hide_usage: bool) -> None:
        self.core = core
        self.hide_usage = hide_usage  # until the first chunk says whether the server honoured it

    def __call__(self, chunk: Any) -> int:
        core = self.core
        choices = chunk.choices
        if not choices:
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                details = getattr(usage, "prompt_tokens_details", None)
                core.set_usage(
                    input_tokens=usage.prompt_tokens,
                    output_tokens=usage.completion_tokens,
                    cached_input_tokens=getattr(details, "cached_tokens", None),
                )
                return HIDE if self.hide_usage else NOT_A_UNIT
            return NOT_A_UNIT
        if core.response_id is None:
            core.response_id = chunk.id
            core.response_model = chunk.model
            if self.hide_usage:
                self.hide_usage = "usage" in _fields_set(chunk)
        choice = choices[0]
        if choice.finish_reason is not None:
            core.finish_reasons.append(choice.finish_reason)
        try:
            delta = choice.delta  # an attribute read, not a getattr call: this runs per chunk
        except AttributeError:
            delta = None
        if delta is None:  # legacy completions
            text = choice.text
            return estimate_tokens(text) if text else NOT_A_UNIT
        content = delta.content
        tool_calls = delta.tool_calls
        if not tool_calls:
            # The common case, inlined: estimate_tokens(content) for a text delta.
            return ((len(content) + 2) >> 2 or 1) if content else NOT_A_UNIT
        tokens = estimate_tokens(content)
        for call in tool_calls:
            function = call.function
            if function is not None:
                tokens += estimate_tokens(function.arguments) + estimate_tokens(function.name)
        return max(tokens, 1)

    @staticmethod
    def text(chunk: Any) -> str | None:
        choices = chunk.choices
        if not choices:
            return None
        delta = getattr(choices[0], "delta", None)
        return str(choices[0].text) if delta is None else delta.content


def _fields_set(chunk: Any) -> Any:
    fields = getattr(chunk, "model_fields_set", None)  # pydantic 2
    return fields if fields is not None else getattr(chunk, "__fields_set__", ())


_TEXT_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.refusal.delta",
        "response.reasoning_summary_text.delta",
    }
)
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesMeter:
    """Responses API events: deltas are units; usage comes with the final response event."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, event: Any) -> int:
        kind = event.type
        if kind in _TEXT_EVENTS:
            return estimate_tokens(event.delta) or 1
        if kind in _FINAL_EVENTS or kind == "response.created":
            response = event.response
            core = self.core
            core.response_id = response.id
            core.response_model = response.model
            if core.model is None and response.model:
                core.model = response.model  # retrieve(stream=True) names no model
            if getattr(response, "background", None) is True:
                mark_background(core)
            usage = response.usage
            if usage is not None:
                details = getattr(usage, "input_tokens_details", None)
                core.set_usage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cached_input_tokens=getattr(details, "cached_tokens", None),
                )
            if kind != "response.created":
                core.finish_reasons.append(response.status or kind.rsplit(".", 1)[-1])
        return NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        return str(event.delta) if event.type in _TEXT_EVENTS else None


class AutoMeter:
    """A stream whose request StreamGuard did not see (or an endpoint without a meter of its
    own): chat or Responses, decided by the first chunk. Other event streams are passed
    through uncounted."""

    __slots__ = ("core", "inner")

    def __init__(self, core: StreamCore) -> None:
        self.core = core
        self.inner: Any = None

    def __call__(self, chunk: Any) -> int:
        inner = self.inner
        if inner is None:
            if hasattr(chunk, "choices"):
                inner = ChatMeter(self.core, False)
            elif isinstance(getattr(chunk, "type", None), str):
                inner = ResponsesMeter(self.core)
            else:
                return NOT_A_UNIT
            self.inner = inner
        return int(inner(chunk))

    def text(self, chunk: Any) -> str | None:
        inner = self.inner
        return inner.text(chunk) if inner is not None else None
