"""Mistral's wire formats, served under ``/mistral`` so they do not collide with OpenAI's paths.

mistralai appends ``/v1/...`` to ``server_url`` (trailing ``/`` removed), so
``server_url=up.mistral_base_url`` (``up.url + "/mistral"``) reaches every route below:

- ``/v1/chat/completions`` (``client.chat``) and ``/v1/agents/completions``
  (``client.agents``): chunks are OpenAI-shaped; unlike OpenAI, the last chunk carries both
  ``finish_reason`` and ``usage``, then ``[DONE]``;
- ``/v1/fim/completions`` (``client.fim``): the same chunks, the prompt in ``prompt`` and
  ``suffix``;
- ``/v1/conversations`` (start), ``/v1/conversations/{id}`` (append) and
  ``/v1/conversations/{id}/restart`` (``client.beta.conversations``): named events
  (``conversation.response.started``, ``message.output.delta``, ``conversation.response.done``
  with the usage); a started conversation's id is ``conv-{request id}``.

mistralai's ``EventStream`` needs ``text/event-stream`` and validates every event.
"""

from __future__ import annotations

import dataclasses
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


class MistralFimWire(MistralChatWire):
    """``POST /mistral/v1/fim/completions``: chat chunks; the input is ``prompt`` + ``suffix``."""

    api: ClassVar[str] = "fim"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        parsed = super().parse(body, path_model, stream)
        return dataclasses.replace(parsed, input_tokens=input_tokens_of(body, "prompt", "suffix"))


class MistralConversationWire(Wire):
    """``POST /mistral/v1/conversations[/{id}[/restart]]``: named events, the usage in
    ``conversation.response.done``."""

    provider: ClassVar[str] = "mistral"
    api: ClassVar[str] = "conversations"
    default_model: ClassVar[str] = "mistral-medium-latest"  # append and restart name no model

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        args = body.get("completion_args") or {}
        return ParsedRequest(
            model=str(body.get("model") or ""),
            stream=bool(body.get("stream")),
            max_tokens=positive_int(args.get("max_tokens") if isinstance(args, Mapping) else None),
            input_tokens=input_tokens_of(body, "inputs"),
        )

    def head(self, turn: Turn) -> list[bytes]:
        event = "conversation.response.started"
        started = {"type": event, "conversation_id": f"conv-{turn.request_id}"}
        return [sse(started, event=event)]

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        delta = {
            "type": "message.output.delta",
            "id": f"msg-{turn.request_id}",
            "content": text,
            "role": "assistant",
            "model": turn.model or self.default_model,
        }
        return sse(delta, event="message.output.delta")

    def tail(self, turn: Turn) -> list[bytes]:
        usage = {
            "prompt_tokens": turn.input_tokens,
            "completion_tokens": turn.generated,
            "total_tokens": turn.input_tokens + turn.generated,
        }
        event = "conversation.response.done"
        return [sse({"type": event, "usage": usage}, event=event)]
