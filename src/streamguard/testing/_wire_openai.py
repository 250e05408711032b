"""OpenAI wire formats: chat completions, legacy completions and the Responses API.

Checked against the openai SDK's ``Stream`` (``[DONE]`` ends the stream; a ``data`` object with
an ``error`` key raises ``APIError``), ``ChatCompletionStreamManager`` and the Responses stream
helper, whose state machine needs ``response.created`` first, ``output_item.added`` before any
content event, and ``output_item.done`` for every item before ``response.completed``.
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


def openai_error(status: int, message: str) -> dict[str, Any]:
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind, code = "server_error", "server_error"
    else:
        kind, code = "invalid_request_error", "invalid_request"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _usage(turn: Turn) -> dict[str, int]:
    return {
        "prompt_tokens": turn.input_tokens,
        "completion_tokens": turn.generated,
        "total_tokens": turn.input_tokens + turn.generated,
    }


class ChatCompletionsWire(Wire):
    """``POST /v1/chat/completions``: ``chat.completion.chunk`` objects, then ``[DONE]``.

    The first chunk carries the role, each token one ``delta.content``, the last chunk an empty
    delta with ``finish_reason``. With ``stream_options.include_usage`` every chunk has
    ``"usage": null`` and an extra last chunk has ``"choices": []`` and the usage, as OpenAI does.
    """

    provider: ClassVar[str] = "openai"
    api: ClassVar[str] = "chat"
    id_prefix: ClassVar[str] = "chatcmpl-up"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        return ParsedRequest(
            model=str(body.get("model", "")),
            stream=bool(body.get("stream")),
            max_tokens=positive_int(body.get("max_completion_tokens"))
            or positive_int(body.get("max_tokens")),
            input_tokens=input_tokens_of(body, "messages"),
            include_usage=include_usage,
        )

    def _chunk(
        self, turn: Turn, choices: list[dict[str, Any]], usage: dict[str, int] | None = None
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": f"{self.id_prefix}{turn.request_id}",
            "object": "chat.completion.chunk",
            "created": turn.created,
            "model": turn.model,
            "system_fingerprint": "fp_upstream",
            "choices": choices,
        }
        if turn.include_usage:
            chunk["usage"] = usage
        return sse(chunk)

    @staticmethod
    def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def head(self, turn: Turn) -> list[bytes]:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return [self._chunk(turn, [self._choice(delta)])]

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return self._chunk(turn, [self._choice({"content": text})])

    def tail(self, turn: Turn) -> list[bytes]:
        frames = [self._chunk(turn, [self._choice({}, turn.finish)])]
        if turn.include_usage:
            frames.append(self._chunk(turn, [], _usage(turn)))
        return [*frames, _DONE]

    def tail_reports_usage(self, turn: Turn) -> bool:
        return turn.include_usage

    def whole(self, turn: Turn) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": turn.text,
            "refusal": None,
            "annotations": [],
        }
        return {
            "id": f"{self.id_prefix}{turn.request_id}",
            "object": "chat.completion",
            "created": turn.created,
            "model": turn.model,
            "system_fingerprint": "fp_upstream",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": turn.finish}
            ],
            "usage": _usage(turn),
        }

    def error(self, status: int, message: str) -> dict[str, Any]:
        return openai_error(status, message)


class CompletionsWire(Wire):
    """``POST /v1/completions`` (legacy): ``text_completion`` chunks, then ``[DONE]``."""

    provider: ClassVar[str] = "openai"
    api: ClassVar[str] = "completions"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        options = body.get("stream_options")
        return ParsedRequest(
            model=str(body.get("model", "")),
            stream=bool(body.get("stream")),
            max_tokens=positive_int(body.get("max_tokens")),
            input_tokens=input_tokens_of(body, "prompt"),
            include_usage=isinstance(options, Mapping) and bool(options.get("include_usage")),
        )

    def _chunk(
        self, turn: Turn, choices: list[dict[str, Any]], usage: dict[str, int] | None = None
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": f"cmpl-up{turn.request_id}",
            "object": "text_completion",
            "created": turn.created,
            "model": turn.model,
            "choices": choices,
        }
        if turn.include_usage:
            chunk["usage"] = usage
        return sse(chunk)

    @staticmethod
    def _choice(text: str, finish: str | None = None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return self._chunk(turn, [self._choice(text)])

    def tail(self, turn: Turn) -> list[bytes]:
        frames = [self._chunk(turn, [self._choice("", turn.finish)])]
        if turn.include_usage:
            frames.append(self._chunk(turn, [], _usage(turn)))
        return [*frames, _DONE]

    def tail_reports_usage(self, turn: Turn) -> bool:
        return turn.include_usage

    def whole(self, turn: Turn) -> dict[str, Any]:
        return {
            "id": f"cmpl-up{turn.request_id}",
            "object": "text_completion",
            "created": turn.created,
            "model": turn.model,
            "choices": [self._choice(turn.text, turn.finish)],
            "usage": _usage(turn),
        }

    def error(self, status: int, message: str) -> dict[str, Any]:
        return openai_error(status, message)


class ResponsesWire(Wire):
    """``POST /v1/responses``: named events, each with a ``sequence_number``.

    ``response.created``, ``response.in_progress``, ``response.output_item.added``,
    ``response.content_part.added``, one ``response.output_text.delta`` per token, then
    ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``
    and ``response.completed`` carrying the whole response and its usage. With
    ``incomplete_on_length`` a turn cut by ``max_output_tokens`` ends with
    ``response.incomplete`` instead, as OpenAI does (the SDK's ``get_final_response()`` then
    raises, as it does against OpenAI). ``GET /v1/responses/{id}?stream=true`` (``retrieve``)
    streams a stored response the same way.

    ``background: true`` makes a background response, as OpenAI runs one: the server generates
    it to the end whether or not the client stays connected, until
    ``POST /v1/responses/{id}/cancel`` (``responses.cancel``) stops it; the cancel answers the
    response with status ``cancelled``. The request's record says when the client left
    (``disconnected_ns``) and how generation ended (``completed`` or ``cancelled``).
    """

    provider: ClassVar[str] = "openai"
    api: ClassVar[str] = "responses"

    def __init__(self, *, incomplete_on_length: bool = False) -> None:
        self.incomplete_on_length = incomplete_on_length

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        if "stream" in body and isinstance(body["stream"], list):  # GET .../responses/{id}
            return ParsedRequest(
                model="upstream-stored-model",  # the stored response's model
                stream=body["stream"] == ["true"],
                max_tokens=None,
                input_tokens=1,
            )
        return ParsedRequest(
            model=str(body.get("model", "")),
            stream=bool(body.get("stream")),
            max_tokens=positive_int(body.get("max_output_tokens")),
            input_tokens=input_tokens_of(body, "input", "instructions"),
            background=body.get("background") is True,
        )

    def _incomplete(self, turn: Turn) -> bool:
        return self.incomplete_on_length and turn.finish == "length"

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _item(self, turn: Turn, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": f"msg_up{turn.request_id}",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _response(self, turn: Turn, status: str, *, final: bool) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        usage: dict[str, Any] | None = None
        incomplete: dict[str, str] | None = None
        if final:
            output = [self._item(turn, status, [self._part(turn.text)])]
            usage = {
                "input_tokens": turn.input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": turn.generated,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": turn.input_tokens + turn.generated,
            }
            if status == "incomplete":
                incomplete = {"reason": "max_output_tokens"}
        return {
            "id": self.response_id(turn),
            "object": "response",
            "created_at": turn.created,
            "status": status,
            "background": turn.background,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": None,
            "max_output_tokens": turn.max_tokens,
            "metadata": {},
            "model": turn.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "store": False,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
        }

    def _event(self, turn: Turn, event: str, **fields: Any) -> bytes:
        # Sequence numbers count every event of the turn, as OpenAI numbers them.
        seq = turn.events
        turn.events += 1
        return sse({"type": event, "sequence_number": seq, **fields}, event=event)

    def _where(self, turn: Turn) -> dict[str, Any]:
        return {"item_id": f"msg_up{turn.request_id}", "output_index": 0, "content_index": 0}

    def head(self, turn: Turn) -> list[bytes]:
        in_progress = self._response(turn, "in_progress", final=False)
        return [
            self._event(turn, "response.created", response=in_progress),
            self._event(turn, "response.in_progress", response=in_progress),
            self._event(
                turn,
                "response.output_item.added",
                output_index=0,
                item=self._item(turn, "in_progress", []),
            ),
            self._event(
                turn, "response.content_part.added", **self._where(turn), part=self._part("")
            ),
        ]

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return self._event(
            turn, "response.output_text.delta", **self._where(turn), delta=text, logprobs=[]
        )

    def tail(self, turn: Turn) -> list[bytes]:
        status = "incomplete" if self._incomplete(turn) else "completed"
        part = self._part(turn.text)
        return [
            self._event(
                turn, "response.output_text.done", **self._where(turn), text=turn.text, logprobs=[]
            ),
            self._event(turn, "response.content_part.done", **self._where(turn), part=part),
            self._event(
                turn,
                "response.output_item.done",
                output_index=0,
                item=self._item(turn, status, [part]),
            ),
            self._event(
                turn, f"response.{status}", response=self._response(turn, status, final=True)
            ),
        ]

    def whole(self, turn: Turn) -> dict[str, Any]:
        status = "incomplete" if self._incomplete(turn) else "completed"
        return self._response(turn, status, final=True)

    def cancelled(self, turn: Turn) -> dict[str, Any]:
        """The body of ``POST /v1/responses/{id}/cancel``: the response, cancelled."""
        return self._response(turn, "cancelled", final=False)

    @staticmethod
    def response_id(turn: Turn) -> str:
        return f"resp_up{turn.request_id}"

    def error(self, status: int, message: str) -> dict[str, Any]:
        return openai_error(status, message)
