"""Mistral chat wire format, served under ``/mistral`` so it does not collide with OpenAI's path.

mistralai appends ``/v1/chat/completions`` to ``server_url`` (trailing ``/`` removed), so
``server_url=up.mistral_base_url`` (``up.url + "/mistral"``) reaches
``/mistral/v1/chat/completions``. Chunks are OpenAI-shaped; unlike OpenAI, the last chunk carries
both ``finish_reason`` and ``usage``, then ``[DONE]``. mistralai's ``EventStream`` needs
``text/event-stream`` and validates every chunk into ``CompletionEvent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from streamguard.testing._wire_common import (
    ParsedRequest,
    Turn,
    Wire,
    input_tokens_of,
    positive_int,
    sse,
)

_DONE = b"data: [DONE]\n\n"


class MistralChatWire(Wire):
    """``POST /mistral/v1/chat/completions``."""

    provider: ClassVar[str] = "mistral"
    api: ClassVar[str] = "chat"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        return ParsedRequest(
            model=str(body.get("model", "")),
            stream=bool(body.get("stream")),
            max_tokens=positive_int(body.get("max_tokens")),
            input_tokens=input_tokens_of(body, "messages"),
        )

    def _usage(self, turn: Turn) -> dict[str, int]:
        return {
            "prompt_tokens": turn.input_tokens,
            "completion_tokens": turn.generated,
            "total_tokens": turn.input_tokens + turn.generated,
        }

    def _chunk(
        self, turn: Turn, delta: dict[str, Any], finish: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": f"up{turn.request_id}",
            "object": "chat.completion.chunk",
            "created": turn.created,
            "model": turn.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def head(self, turn: Turn) -> list[bytes]:
        return [sse(self._chunk(turn, {"role": "assistant", "content": ""}))]

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return sse(self._chunk(turn, {"content": text}))

    def tail(self, turn: Turn) -> list[bytes]:
        last = self._chunk(turn, {"content": ""}, turn.finish)
        last["usage"] = self._usage(turn)
        return [sse(last), _DONE]

    def whole(self, turn: Turn) -> dict[str, Any]:
        message = {"role": "assistant", "content": turn.text, "tool_calls": None}
        return {
            "id": f"up{turn.request_id}",
            "object": "chat.completion",
            "created": turn.created,
            "model": turn.model,
            "choices": [{"index": 0, "message": message, "finish_reason": turn.finish}],
            "usage": self._usage(turn),
        }

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {
            "object": "error",
            "message": message,
            "type": "rate_limited" if status == 429 else "api_error",
            "param": None,
            "code": str(status),
        }
