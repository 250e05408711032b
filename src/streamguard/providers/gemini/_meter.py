"""Reading google-genai chunks: which carry model output, and where usage is."""

from __future__ import annotations

import json
from typing import Any

from streamguard._engine.core import NOT_A_UNIT, StreamCore
from streamguard._money.estimate import estimate_tokens

__all__ = ["GeminiMeter"]


class GeminiMeter:
    """``GenerateContentResponse`` chunks: a chunk whose first candidate has output parts (text,
    thoughts, function calls, inline data) is a unit.

    ``usage_metadata`` is a running total of the request on every chunk, so the last one
    replaces the previous ones; it is never summed. The input count is known from the first
    chunk; the output count becomes exact when a candidate finishes (a stream cut before that
    keeps its estimate). With automatic function calling one stream sends several requests,
    each with its own running total: a chunk that follows a finished request starts the next
    one, and the receipt counts the finished requests plus the current one.
    """

    __slots__ = ("_before", "_current", "_finished", "_seen", "core")

    def __init__(self, core: StreamCore) -> None:
        self.core = core
        self._before = (0, 0, 0)  # (input, output, cached) of the requests that finished
        self._current = (0, 0, 0)
        self._finished = False
        self._seen: tuple[Any, ...] = ()  # the input counts of the last usage looked at

    def __call__(self, chunk: Any) -> int:
        core = self.core
        if core.response_id is None:
            core.response_id = chunk.response_id
            core.response_model = chunk.model_version
        tokens = NOT_A_UNIT
        finish = None
        candidates = chunk.candidates
        if candidates:
            candidate = candidates[0]
            finish = candidate.finish_reason
            content = candidate.content
            parts = content.parts if content is not None else None
            if parts:
                # The common case inlined (text parts; estimate_tokens per part): no call but
                # len() per chunk. Any other part is left to _parts_tokens.
                tokens = 0
                for part in parts:
                    text = part.text
                    if not text or part.function_call is not None:
                        tokens = _parts_tokens(parts)
                        break
                    tokens += (len(text) + 2) >> 2 or 1
        usage = chunk.usage_metadata
        if usage is not None:
            # A running total on every chunk: what the receipt takes from it (the input count
            # at once, the output count at the end) changes on few chunks, so only those are
            # looked at further.
            seen = (
                usage.prompt_token_count,
                usage.tool_use_prompt_token_count,
                usage.cached_content_token_count,
            )
            if finish is not None or self._finished or seen != self._seen:
                self._seen = seen
                self._observe(usage, finished=finish is not None)
        if finish is not None:
            core.finish_reasons.append(str(getattr(finish, "value", finish)))
        return tokens

    def _observe(self, usage: Any, *, finished: bool) -> None:
        current = (
            (usage.prompt_token_count or 0) + (usage.tool_use_prompt_token_count or 0),
            (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0),
            usage.cached_content_token_count or 0,
        )
        previous = self._current
        if self._finished and (current[0] != previous[0] or current[1] < previous[1]):
            # The request that finished is followed by the next one (a new prompt, a new
            # running total); a late chunk of the same request would repeat its prompt count.
            self._before = _add(self._before, previous)
            self._finished = False
        self._current = current
        total_in, total_out, cached = _add(self._before, self._current)
        if finished or self._finished:
            self._finished = True
            self.core.set_usage(
                input_tokens=total_in, output_tokens=total_out, cached_input_tokens=cached
            )
        else:
            self.core.set_usage(input_tokens=total_in, cached_input_tokens=cached)

    @staticmethod
    def text(chunk: Any) -> str | None:
        """The answer text of a chunk (thoughts excluded), for streaming policies."""
        candidates = chunk.candidates
        if not candidates or candidates[0].content is None:
            return None
        parts = candidates[0].content.parts or ()
        texts = [part.text for part in parts if part.text and not part.thought]
        return "".join(texts) if texts else None


def _add(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _parts_tokens(parts: Any) -> int:
    tokens = 0
    output = False
    for part in parts:
        if part.text:
            tokens += estimate_tokens(part.text)
            output = True
        elif part.function_call is not None:
            call = part.function_call
            args = json.dumps(call.args, default=str) if call.args else ""
            tokens += max(1, estimate_tokens(args) + estimate_tokens(call.name))
            output = True
        elif part.inline_data is not None or part.executable_code is not None:
            tokens += 1
            output = True
    return tokens if output else NOT_A_UNIT
