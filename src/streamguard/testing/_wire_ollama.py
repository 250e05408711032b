"""Ollama wire formats: ``POST /api/chat`` and ``POST /api/generate``, newline-delimited JSON.

Checked against ``ollama._client``: each line is ``json.loads``-ed and validated into
``ChatResponse``/``GenerateResponse``; a line with an ``error`` key raises ``ResponseError``.
Ollama streams unless the body says ``"stream": false``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from streamguard.testing._wire_common import (
    ParsedRequest,
    Turn,
    Wire,
    input_tokens_of,
    ndjson,
    positive_int,
)


def _created_at(turn: Turn) -> str:
    return datetime.fromtimestamp(turn.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _OllamaWire(Wire):
    provider: ClassVar[str] = "ollama"
    media_type: ClassVar[str] = "application/x-ndjson"
    prompt_fields: ClassVar[tuple[str, ...]] = ()

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        options = body.get("options")
        num_predict = options.get("num_predict") if isinstance(options, Mapping) else None
        return ParsedRequest(
            model=str(body.get("model", "")),
            stream=body.get("stream", True) is not False,
            max_tokens=positive_int(num_predict),  # -1 (infinite) and -2 mean "no limit"
            input_tokens=input_tokens_of(body, *self.prompt_fields),
        )

    def _piece(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def _frame(self, turn: Turn, text: str, **extra: Any) -> dict[str, Any]:
        return {"model": turn.model, "created_at": _created_at(turn), **self._piece(text), **extra}

    def _final(self, turn: Turn, text: str) -> dict[str, Any]:
        # Durations are nanoseconds; the upstream spends all its time "evaluating".
        return self._frame(
            turn,
            text,
            done=True,
            done_reason=turn.finish,
            total_duration=turn.elapsed_ns,
            load_duration=0,
            prompt_eval_count=turn.input_tokens,
            prompt_eval_duration=0,
            eval_count=turn.generated,
            eval_duration=turn.elapsed_ns,
        )

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return ndjson(self._frame(turn, text, done=False))

    def tail(self, turn: Turn) -> list[bytes]:
        return [ndjson(self._final(turn, ""))]

    def whole(self, turn: Turn) -> dict[str, Any]:
        return self._final(turn, turn.text)

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}

    def malformed(self) -> bytes:
        return b'{"malformed": \n'


class ChatWire(_OllamaWire):
    """``/api/chat``: ``{"message": {"role": "assistant", "content": ...}, "done": false}`` per
    token; the last line has ``done: true``, ``done_reason``, ``prompt_eval_count``,
    ``eval_count`` and the durations."""

    api: ClassVar[str] = "chat"
    prompt_fields: ClassVar[tuple[str, ...]] = ("messages",)

    def _piece(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}


class GenerateWire(_OllamaWire):
    """``/api/generate``: ``{"response": ..., "done": false}`` per token, then the ``done`` line."""

    api: ClassVar[str] = "generate"
    prompt_fields: ClassVar[tuple[str, ...]] = ("prompt", "system")

    def _piece(self, text: str) -> dict[str, Any]:
        return {"response": text}
