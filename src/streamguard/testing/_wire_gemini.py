"""Gemini wire format (Gemini Developer API, as google-genai speaks it).

``POST /{version}/models/{model}:streamGenerateContent?alt=sse`` streams ``data:`` frames, each a
``GenerateContentResponse`` with a running ``usageMetadata``; ``:generateContent`` returns one.
google-genai joins ``http_options.base_url`` + ``{api_version}/models/{model}:...`` (``v1`` by
default for an API key), so the upstream accepts any version segment.
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

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


class GenerateContentWire(Wire):
    """One frame per token (``candidates[0].content.parts[0].text``) with the usage so far; a last
    frame with empty text, ``finishReason`` ``MAX_TOKENS`` or ``STOP`` and the final usage."""

    provider: ClassVar[str] = "gemini"
    api: ClassVar[str] = "generate_content"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        config = body.get("generationConfig", body.get("generation_config"))
        limit = None
        if isinstance(config, Mapping):
            limit = config.get("maxOutputTokens", config.get("max_output_tokens"))
        return ParsedRequest(
            model=path_model or "",
            stream=bool(stream),
            max_tokens=positive_int(limit),
            input_tokens=input_tokens_of(
                body, "contents", "systemInstruction", "system_instruction"
            ),
        )

    def _response(self, turn: Turn, text: str, finish: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        }
        if finish is not None:
            candidate["finishReason"] = finish
        return {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": turn.input_tokens,
                "candidatesTokenCount": turn.generated,
                "totalTokenCount": turn.input_tokens + turn.generated,
            },
            "modelVersion": turn.model,
            "responseId": f"resp-up{turn.request_id}",
        }

    @staticmethod
    def _finish(turn: Turn) -> str:
        return "MAX_TOKENS" if turn.finish == "length" else "STOP"

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return sse(self._response(turn, text, None))

    def tail(self, turn: Turn) -> list[bytes]:
        return [sse(self._response(turn, "", self._finish(turn)))]

    def whole(self, turn: Turn) -> dict[str, Any]:
        return self._response(turn, turn.text, self._finish(turn))

    def error(self, status: int, message: str) -> dict[str, Any]:
        name = _STATUS_NAMES.get(status, "INTERNAL")
        return {"error": {"code": status, "message": message, "status": name}}
