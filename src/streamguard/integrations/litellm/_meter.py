"""Reading LiteLLM's chunks (``ModelResponseStream``): units, ids, and provider usage."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streamguard._engine.core import HIDE, NOT_A_UNIT, StreamCore
from streamguard._money.estimate import estimate_tokens

__all__ = ["LiteLLMMeter", "usage_from_chunks", "usage_only"]


def _reported(usage: Any) -> bool:
    # LiteLLM puts an ``UnreportedUsage`` (all zeros) where the provider reported nothing.
    return usage is not None and type(usage).__name__ != "UnreportedUsage"


class LiteLLMMeter:
    """A chunk with delta content, reasoning or tool-call arguments is a unit.

    A chunk carrying ``usage`` is the provider's report (LiteLLM passes it through only when
    ``stream_options.include_usage`` was sent); when StreamGuard asked for it, the usage-only
    chunk is hidden, so the application sees what it sees without StreamGuard.
    """

    __slots__ = ("core", "hide_usage")

    def __init__(self, core: StreamCore, hide_usage: bool) -> None:
        self.core = core
        self.hide_usage = hide_usage

    def __call__(self, chunk: Any) -> int:
        core = self.core
        if core.response_id is None:
            core.response_id = getattr(chunk, "id", None)
            core.response_model = getattr(chunk, "model", None)
        choices = getattr(chunk, "choices", None) or ()
        tokens = 0
        unit = False
        for choice in choices:
            finish = getattr(choice, "finish_reason", None)
            if finish:
                core.finish_reasons.append(str(finish))
            delta = getattr(choice, "delta", None)
            if delta is None:
                continue
            for text in (
                getattr(delta, "content", None),
                getattr(delta, "reasoning_content", None),
            ):
                if text:
                    unit = True
                    tokens += estimate_tokens(text)
            for call in getattr(delta, "tool_calls", None) or ():
                function = getattr(call, "function", None)
                if function is not None:
                    unit = True
                    tokens += estimate_tokens(getattr(function, "arguments", None) or "")
                    tokens += estimate_tokens(getattr(function, "name", None) or "")
        usage = getattr(chunk, "usage", None)
        if _reported(usage):
            set_usage(core, usage)
            if self.hide_usage and usage_only(chunk):
                return HIDE
        return max(tokens, 1) if unit else NOT_A_UNIT

    @staticmethod
    def text(chunk: Any) -> str | None:
        choices = getattr(chunk, "choices", None)
        if not choices:
            return None
        delta = getattr(choices[0], "delta", None)
        return getattr(delta, "content", None) if delta is not None else None


def usage_only(chunk: Any) -> bool:
    """The extra chunk ``include_usage`` adds: usage, and no output or finish reason."""
    if getattr(chunk, "usage", None) is None:
        return False
    for choice in getattr(chunk, "choices", None) or ():
        if getattr(choice, "finish_reason", None):
            return False
        delta = getattr(choice, "delta", None)
        if delta is not None and (
            getattr(delta, "content", None)
            or getattr(delta, "reasoning_content", None)
            or getattr(delta, "tool_calls", None)
        ):
            return False
    return True


def set_usage(core: StreamCore, usage: Any) -> None:
    details = getattr(usage, "prompt_tokens_details", None)
    core.set_usage(
        input_tokens=_int(getattr(usage, "prompt_tokens", None)),
        output_tokens=_int(getattr(usage, "completion_tokens", None)),
        cached_input_tokens=_int(getattr(details, "cached_tokens", None)),
    )


def usage_from_chunks(core: StreamCore, chunks: Iterable[Any]) -> None:
    """At the end of a stream: the provider's last usage report among the chunks LiteLLM
    kept (``CustomStreamWrapper.chunks``), including those it did not show the application."""
    last = None
    for chunk in chunks:
        usage = getattr(chunk, "usage", None)
        if _reported(usage):
            last = usage
    if last is not None:
        set_usage(core, last)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
