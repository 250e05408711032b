"""OpenAI event-stream wire formats beyond chat and Responses: audio transcriptions, image
generation and edits, and Assistants runs.

Checked against the openai SDK's ``Stream`` (plain ``data:`` events, ``[DONE]`` where the API
sends it) and its types: ``TranscriptionStreamEvent``, ``ImageGenStreamEvent`` /
``ImageEditStreamEvent`` and ``AssistantStreamEvent`` (named ``thread.*`` events, which the SDK
wraps as ``{"event": ..., "data": ...}``), and the ``AssistantEventHandler`` helper behind
``runs.stream()``, which needs ``thread.message.created`` before the message's deltas.

Transcriptions and image edits are ``multipart/form-data`` requests: the server hands their
form fields (strings) to ``parse`` as the body.
"""

from __future__ import annotations

import base64
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
from streamguard.testing._wire_openai import openai_error

__all__ = [
    "AgentSessionWire",
    "ImageEditWire",
    "ImageWire",
    "RunWire",
    "TranscriptionWire",
    "image_text",
]


def _truthy(value: object) -> bool:
    """A JSON ``true`` or a form field ``"true"``."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def image_text(b64: str) -> str:
    """The text a test-upstream image carries (its ``b64_json`` decoded): tokens' texts."""
    return base64.b64decode(b64).decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class _PromptWire(Wire):
    """A request that names its model and a ``prompt`` and asks for no token limit (form
    fields arrive as strings: ``stream`` is ``"true"``)."""

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        return ParsedRequest(
            model=str(body.get("model", "")),
            stream=_truthy(body.get("stream")),
            max_tokens=None,
            input_tokens=input_tokens_of(body, "prompt"),
        )


class TranscriptionWire(_PromptWire):
    """``POST /v1/audio/transcriptions`` (multipart) with ``stream=true``: one
    ``transcript.text.delta`` per token, then ``transcript.text.done`` with the whole text and
    the usage (``type: "tokens"``; input tokens are the words of ``prompt``, at least 1)."""

    provider: ClassVar[str] = "openai"
    api: ClassVar[str] = "transcriptions"

    @staticmethod
    def _usage(turn: Turn) -> dict[str, Any]:
        return {
            "type": "tokens",
            "input_tokens": turn.input_tokens,
            "output_tokens": turn.generated,
            "total_tokens": turn.input_tokens + turn.generated,
            "input_token_details": {"audio_tokens": turn.input_tokens, "text_tokens": 0},
        }

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return sse({"type": "transcript.text.delta", "delta": text, "logprobs": None})

    def tail(self, turn: Turn) -> list[bytes]:
        done = {"type": "transcript.text.done", "text": turn.text, "usage": self._usage(turn)}
        return [sse(done)]

    def whole(self, turn: Turn) -> dict[str, Any]:
        return {"text": turn.text, "usage": self._usage(turn)}

    def error(self, status: int, message: str) -> dict[str, Any]:
        return openai_error(status, message)


class ImageWire(_PromptWire):
    """``POST /v1/images/generations`` (JSON) and ``/v1/images/edits`` (multipart) with
    ``stream=true``: one ``<kind>.partial_image`` per token (its ``b64_json`` is the token's text,
    base64: ``image_text`` reads it back), then ``<kind>.completed`` with the whole text as the
    image and the usage. ``kind`` is ``image_generation`` or ``image_edit``."""

    provider: ClassVar[str] = "openai"
    api: ClassVar[str] = "images.generations"
    kind: ClassVar[str] = "image_generation"

    @staticmethod
    def _usage(turn: Turn) -> dict[str, Any]:
        return {
            "input_tokens": turn.input_tokens,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": turn.input_tokens},
            "output_tokens": turn.generated,
            "total_tokens": turn.input_tokens + turn.generated,
        }

    def _event(self, turn: Turn, suffix: str, b64: str, **fields: Any) -> bytes:
        event = f"{self.kind}.{suffix}"
        return sse(
            {
                "type": event,
                "b64_json": b64,
                "background": "opaque",
                "created_at": turn.created,
                "output_format": "png",
                "quality": "low",
                "size": "1024x1024",
                **fields,
            },
            event=event,
        )

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return self._event(turn, "partial_image", _b64(text), partial_image_index=index)

    def tail(self, turn: Turn) -> list[bytes]:
        return [self._event(turn, "completed", _b64(turn.text), usage=self._usage(turn))]

    def whole(self, turn: Turn) -> dict[str, Any]:
        return {
            "created": turn.created,
            "data": [{"b64_json": _b64(turn.text)}],
            "usage": self._usage(turn),
        }

    def error(self, status: int, message: str) -> dict[str, Any]:
        return openai_error(status, message)


class RunWire(Wire):
    """Assistants runs: ``POST /v1/threads/runs`` (create_and_run), ``/v1/threads/{id}/runs``
    and ``/v1/threads/{id}/runs/{run}/submit_tool_outputs``, with ``stream: true``.

    ``thread.run.created``, ``thread.run.queued``, ``thread.run.in_progress``,
    ``thread.message.created``, ``thread.message.in_progress``, one ``thread.message.delta`` per
    token, ``thread.message.completed``, ``thread.run.completed`` (or ``thread.run.incomplete``
    when ``max_completion_tokens`` cut it) with the usage, then ``event: done`` /
    ``data: [DONE]``. Input tokens are the words of ``instructions``, ``additional_messages``
    and a new ``thread``'s messages.
    """

    provider: ClassVar[str] = "openai"
    api: ClassVar[str] = "runs"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        return ParsedRequest(
            # A run reports its assistant's model when the request names none.
            model=str(body.get("model") or "upstream-assistant"),
            stream=bool(body.get("stream")),
            max_tokens=positive_int(body.get("max_completion_tokens")),
            input_tokens=input_tokens_of(
                body, "instructions", "additional_instructions", "additional_messages", "thread"
            ),
        )

    @staticmethod
    def _ids(turn: Turn) -> tuple[str, str, str]:
        n = turn.request_id
        return f"run_up{n}", f"thread_up{n}", f"msg_up{n}"

    def _run(self, turn: Turn, status: str, *, final: bool) -> dict[str, Any]:
        run_id, thread_id, _ = self._ids(turn)
        usage = None
        if final:
            usage = {
                "prompt_tokens": turn.input_tokens,
                "completion_tokens": turn.generated,
                "total_tokens": turn.input_tokens + turn.generated,
            }
        incomplete = {"reason": "max_completion_tokens"} if status == "incomplete" else None
        return {
            "id": run_id,
            "object": "thread.run",
            "assistant_id": "asst_up",
            "created_at": turn.created,
            "instructions": "",
            "model": turn.model,
            "parallel_tool_calls": True,
            "status": status,
            "thread_id": thread_id,
            "tools": [],
            "incomplete_details": incomplete,
            "max_completion_tokens": turn.max_tokens,
            "usage": usage,
        }

    def _message(self, turn: Turn, status: str, text: str | None) -> dict[str, Any]:
        run_id, thread_id, message_id = self._ids(turn)
        content = [] if text is None else [{"type": "text", "text": _text(text)}]
        return {
            "id": message_id,
            "object": "thread.message",
            "assistant_id": "asst_up",
            "content": content,
            "created_at": turn.created,
            "role": "assistant",
            "run_id": run_id,
            "status": status,
            "thread_id": thread_id,
            "attachments": [],
            "metadata": {},
        }

    def head(self, turn: Turn) -> list[bytes]:
        return [
            sse(self._run(turn, "queued", final=False), event="thread.run.created"),
            sse(self._run(turn, "queued", final=False), event="thread.run.queued"),
            sse(self._run(turn, "in_progress", final=False), event="thread.run.in_progress"),
            sse(self._message(turn, "in_progress", None), event="thread.message.created"),
            sse(self._message(turn, "in_progress", None), event="thread.message.in_progress"),
        ]

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        delta = {
            "id": self._ids(turn)[2],
            "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text", "text": _text(text)}]},
        }
        return sse(delta, event="thread.message.delta")

    def _status(self, turn: Turn) -> str:
        return "incomplete" if turn.finish == "length" and turn.max_tokens else "completed"

    def tail(self, turn: Turn) -> list[bytes]:
        status = self._status(turn)
        message = self._message(turn, status, turn.text)
        return [
            sse(message, event=f"thread.message.{status}"),
            sse(self._run(turn, status, final=True), event=f"thread.run.{status}"),
            b"event: done\ndata: [DONE]\n\n",
        ]

    def whole(self, turn: Turn) -> dict[str, Any]:
        return self._run(turn, self._status(turn), final=True)

    def error(self, status: int, message: str) -> dict[str, Any]:
        return openai_error(status, message)

    def malformed(self) -> bytes:
        # A named ``thread.`` event: the SDK parses its data as JSON.
        return b'event: thread.message.delta\ndata: {"malformed": \n\n'


class ImageEditWire(ImageWire):
    """``POST /v1/images/edits``: as ``ImageWire``, with ``image_edit.*`` events."""

    api: ClassVar[str] = "images.edits"
    kind: ClassVar[str] = "image_edit"


def _text(value: str) -> dict[str, Any]:
    return {"value": value, "annotations": []}


class AgentSessionWire(Wire):
    """Agent sessions: ``POST /v1/agents/sessions`` with ``stream: true`` (a new session and its
    first turn) and ``GET /v1/agents/sessions/{id}/events`` (the live events of one).

    ``agent.session.created`` (the session, with its agent's model), ``agent.session.turn.
    created``, one ``agent.session.turn.output_text.delta`` per token,
    ``agent.session.turn.completed`` with the turn's usage and ``agent.session.idle``; then the
    upstream ends the response (a live session would keep it open for the next turn). Input
    tokens are the words of ``input`` and the agent's ``instructions``.
    """

    provider: ClassVar[str] = "openai"
    api: ClassVar[str] = "agents.sessions"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        agent = body.get("agent")
        model = agent.get("model") if isinstance(agent, Mapping) else None
        return ParsedRequest(
            model=str(model or "upstream-agent"),
            stream=bool(stream) or bool(body.get("stream")),
            max_tokens=None,
            input_tokens=input_tokens_of({**body, **(agent or {})}, "input", "instructions"),
        )

    @staticmethod
    def _event(current: Turn, kind: str, **fields: Any) -> bytes:
        # ``current``, not ``turn``: several events carry a field named ``turn``.
        current.events += 1
        event_id = f"evt_up{current.request_id}_{current.events}"
        return sse({"type": kind, "event_id": event_id, **fields})

    @staticmethod
    def _ids(turn: Turn) -> dict[str, str]:
        return {"session_id": f"asess_up{turn.request_id}", "turn_id": f"turn_up{turn.request_id}"}

    def _turn(self, turn: Turn, status: str) -> dict[str, Any]:
        ids = self._ids(turn)
        return {"id": ids["turn_id"], "object": "agent.session.turn", "status": status}

    def head(self, turn: Turn) -> list[bytes]:
        ids = self._ids(turn)
        session = {
            "id": ids["session_id"],
            "object": "agent.session",
            "created_at": turn.created,
            "status": "in_progress",
            "agent": {"model": turn.model},
        }
        return [
            self._event(turn, "agent.session.created", session=session),
            self._event(turn, "agent.session.turn.created", **ids, turn=self._turn(turn, "queued")),
        ]

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        return self._event(
            turn,
            "agent.session.turn.output_text.delta",
            **self._ids(turn),
            item_id=f"msg_up{turn.request_id}",
            output_index=0,
            content_index=0,
            delta=text,
        )

    def tail(self, turn: Turn) -> list[bytes]:
        usage = {
            "input_tokens": turn.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": turn.generated,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": turn.input_tokens + turn.generated,
        }
        ids = self._ids(turn)
        return [
            self._event(
                turn,
                "agent.session.turn.completed",
                **ids,
                turn=self._turn(turn, "completed"),
                usage=usage,
            ),
            self._event(turn, "agent.session.idle", session_id=ids["session_id"]),
        ]

    def whole(self, turn: Turn) -> dict[str, Any]:
        return {"id": self._ids(turn)["session_id"], "object": "agent.session", "status": "idle"}

    def error(self, status: int, message: str) -> dict[str, Any]:
        return openai_error(status, message)
