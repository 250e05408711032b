"""Anthropic Messages wire format (``POST /v1/messages``, also ``?beta=true``).

Checked against the anthropic SDK's ``Stream``, which skips events without an ``event:`` name
and ``ping``, and raises on ``event: error``; and against ``MessageStream``'s accumulator, which
needs ``message_start`` first and takes ``message_delta.usage.output_tokens`` as a cumulative
total.
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

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class MessagesWire(Wire):
    """``message_start`` (input tokens, ``output_tokens: 1``), ``content_block_start``, ``ping``,
    one ``content_block_delta``/``text_delta`` per token, ``content_block_stop``,
    ``message_delta`` (``stop_reason`` ``max_tokens`` or ``end_turn``, cumulative
    ``output_tokens``), ``message_stop``."""

    provider: ClassVar[str] = "anthropic"
    api: ClassVar[str] = "messages"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        return ParsedRequest(
            model=str(body.get("model", "")),
            stream=bool(body.get("stream")),
            max_tokens=positive_int(body.get("max_tokens")),
            input_tokens=input_tokens_of(body, "messages", "system"),
        )

    @staticmethod
    def _stop_reason(turn: Turn) -> str:
        return "max_tokens" if turn.finish == "length" else "end_turn"

    def _message(
        self, turn: Turn, content: list[dict[str, Any]], stop: str | None, output_tokens: int
    ) -> dict[str, Any]:
        return {
            "id": f"msg_up{turn.request_id}",
            "type": "message",
            "role": "assistant",
            "model": turn.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": turn.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output_tokens,
                "service_tier": "standard",
            },
        }

    def head(self, turn: Turn) -> list[bytes]:
        start = {"type": "message_start", "message": self._message(turn, [], None, 1)}
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        return [
            sse(start, event="message_start"),
            sse(block, event="content_block_start"),
            sse({"type": "ping"}, event="ping"),
        ]

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        }
        return sse(delta, event="content_block_delta")

    def tail(self, turn: Turn) -> list[bytes]:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason(turn), "stop_sequence": None},
            "usage": {"output_tokens": turn.generated},
        }
        return [
            sse({"type": "content_block_stop", "index": 0}, event="content_block_stop"),
            sse(delta, event="message_delta"),
            sse({"type": "message_stop"}, event="message_stop"),
        ]

    def whole(self, turn: Turn) -> dict[str, Any]:
        content = [{"type": "text", "text": turn.text}]
        return self._message(turn, content, self._stop_reason(turn), turn.generated)

    def error(self, status: int, message: str) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def malformed(self) -> bytes:
        # The SDK drops events without a name, so the broken payload needs one to be parsed.
        return b'event: content_block_delta\ndata: {"malformed": \n\n'


class SessionEventsWire(Wire):
    """``GET /v1/sessions/{id}/events/stream`` (and ``.../threads/{id}/events/stream``): one
    agent turn of a managed-agent session, as named events.

    ``session.status_running``, ``span.model_request_start``, then per token an
    ``event_delta`` (``content_delta`` of the turn's ``agent.message``) when the request asked
    for ``event_deltas=agent.message``, else one ``agent.message`` per token; then the whole
    ``agent.message`` (with deltas), ``span.model_request_end`` with the ``model_usage`` and
    ``session.status_idle`` (``end_turn``); then the upstream ends the response (a live session
    would keep it open for the next turn). The request carries no prompt: 1 input token.
    """

    provider: ClassVar[str] = "anthropic"
    api: ClassVar[str] = "sessions.events"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        deltas = body.get("event_deltas")  # a GET: each query parameter is a list
        return ParsedRequest(
            model="",
            stream=True,
            max_tokens=None,
            input_tokens=1,
            include_usage="agent.message" in (deltas or ()),  # here: whether to send deltas
        )

    @staticmethod
    def _event(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, **fields}, event=kind)

    @staticmethod
    def _at(turn: Turn) -> str:
        return f"2026-01-01T00:00:{turn.created % 60:02d}Z"

    def _message(self, turn: Turn, index: int | None, text: str) -> bytes:
        event_id = f"sevt_msg_up{turn.request_id}" + ("" if index is None else f"_{index}")
        content = [{"type": "text", "text": text}]
        return self._event(
            "agent.message", id=event_id, content=content, processed_at=self._at(turn)
        )

    def head(self, turn: Turn) -> list[bytes]:
        n, at = turn.request_id, self._at(turn)
        frames = [
            self._event("session.status_running", id=f"sevt_run_up{n}", processed_at=at),
            self._event("span.model_request_start", id=f"sevt_mrs_up{n}", processed_at=at),
        ]
        if turn.include_usage:
            preview = {"id": f"sevt_msg_up{n}", "type": "agent.message"}
            frames.append(self._event("event_start", event=preview))
        return frames

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        if not turn.include_usage:
            return self._message(turn, index, text)
        delta = {"type": "content_delta", "index": 0, "content": {"type": "text", "text": text}}
        return self._event("event_delta", event_id=f"sevt_msg_up{turn.request_id}", delta=delta)

    def tail(self, turn: Turn) -> list[bytes]:
        n, at = turn.request_id, self._at(turn)
        usage = {
            "input_tokens": turn.input_tokens,
            "output_tokens": turn.generated,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        frames = [self._message(turn, None, turn.text)] if turn.include_usage else []
        return [
            *frames,
            self._event(
                "span.model_request_end",
                id=f"sevt_mre_up{n}",
                model_request_start_id=f"sevt_mrs_up{n}",
                model_usage=usage,
                is_error=False,
                processed_at=at,
            ),
            self._event(
                "session.status_idle",
                id=f"sevt_idle_up{n}",
                stop_reason={"type": "end_turn"},
                processed_at=at,
            ),
        ]

    def whole(self, turn: Turn) -> dict[str, Any]:
        return {"data": [], "next_page": None}

    def error(self, status: int, message: str) -> dict[str, Any]:
        return MessagesWire().error(status, message)

    def malformed(self) -> bytes:
        return b'event: event_delta\ndata: {"malformed": \n\n'
