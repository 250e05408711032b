"""openai: every SSE stream, guarded in place where the client builds it (``_stainless``).

Chat completions, legacy completions, the Responses API (``responses`` and ``beta.responses``),
audio transcriptions, image generation and edits, Assistants runs and agent sessions get their
meters (``ENDPOINTS``); the request side injects ``include_usage`` into chat and completions
requests that did not ask for it (the extra chunk is then hidden from the application) and reads
the limits for the receipt. A background response (``background=True``) goes on generating on
the server when its stream is closed: ``_background`` bills it so and cancels it where
``cancel_background`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamguard._engine.core import StreamCore
from streamguard._engine.drivers import Meter
from streamguard._runtime import get_runtime
from streamguard.providers._base import Patcher
from streamguard.providers._stainless import (
    Request,
    StainlessSdk,
    helper_close,
    install,
    raw_response_close,
    release,
)
from streamguard.providers.openai._background import BackgroundCancel, mark_background
from streamguard.providers.openai._events import (
    AgentSessionMeter,
    ImageMeter,
    RunMeter,
    TranscriptionMeter,
)
from streamguard.providers.openai._meters import AutoMeter, ChatMeter, ResponsesMeter

__all__ = ["ENDPOINTS", "OpenAIPatcher"]

PROVIDER = "openai"
#: Request path prefix -> (operation, chunk kind). A path not listed is guarded with the
#: AutoMeter and the operation "chat". Order matters: the first matching prefix wins.
ENDPOINTS: list[tuple[str, str, str]] = [
    ("/chat/completions", "chat", "chat"),
    ("/completions", "text_completion", "chat"),
    ("/responses", "chat", "responses"),
    # Entry points whose events are not chat or Responses events (providers/openai/_events.py).
    ("/audio/transcriptions", "transcription", "transcription"),
    ("/images/generations", "image_generation", "image"),
    ("/images/edits", "image_edit", "image"),
    ("/threads", "invoke_agent", "run"),  # runs, create_and_run, submit_tool_outputs
    ("/agents/sessions", "invoke_agent", "agent_session"),
]
_HELPERS = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream.close"),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream.close"),
    ("openai.lib.streaming.responses._responses", "ResponseStream.close"),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream.close"),
)
_RAW_RESPONSES = (
    ("openai._response", "APIResponse.close"),
    ("openai._response", "AsyncAPIResponse.close"),
    ("openai._legacy_response", "LegacyAPIResponse.close"),
)
_METERS: dict[str, Callable[[StreamCore], Meter]] = {
    "responses": ResponsesMeter,
    "transcription": TranscriptionMeter,
    "image": ImageMeter,
    "run": RunMeter,
    "agent_session": AgentSessionMeter,
}
_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in _LIMITS:
        value = body.get(key)
        if isinstance(value, int):
            return value
    return None


def _endpoint(path: str) -> tuple[str, str]:
    for prefix, operation, kind in ENDPOINTS:
        if prefix in path:  # "/v1/...", Azure's "/openai/deployments/<name>/..."
            return operation, kind
    return "chat", "auto"


def _meter(kind: str, hide_usage: bool) -> Callable[[StreamCore], Meter]:
    if kind == "chat":
        return _chat_hiding_usage if hide_usage else _chat
    return _METERS.get(kind, AutoMeter)


# The chat meter factories, one of each (a request keeps its factory: a closure per stream was
# 248 bytes per open stream).
def _chat(core: StreamCore) -> Meter:
    return ChatMeter(core, False)


def _chat_hiding_usage(core: StreamCore) -> Meter:
    return ChatMeter(core, True)


def _with_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Ask for exact usage when the request did not; say whether to hide the extra chunk.

    Only a request that did not set ``include_usage`` at all is changed, so another layer
    that asked for usage (OpenLLMetry, the caller) gets its chunk as it would without
    StreamGuard."""
    if not get_runtime().options.include_usage:
        return body, False
    options = body.get("stream_options")
    if isinstance(options, dict) and "include_usage" in options:
        return body, False
    merged = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return {**body, "stream_options": merged}, True


class _OpenAI(StainlessSdk):
    provider = PROVIDER

    def prepare(self, url: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if body.get("stream") is True and _endpoint(url)[1] == "chat":
            return _with_usage(body)
        return body, False

    def endpoint(self, url: str, hidden: bool) -> tuple[str, Callable[[StreamCore], Meter]]:
        operation, kind = _endpoint(url)
        return operation, _meter(kind, hidden)

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        return _max_tokens(body)

    def _request(self, url: str, body: dict[str, Any], client: Any, hidden: bool) -> Request:
        agent = body.get("agent")
        if "model" not in body and isinstance(agent, dict) and isinstance(agent.get("model"), str):
            body = {**body, "model": agent["model"]}  # agent sessions name it there (not sent)
        request = super()._request(url, body, client, hidden)
        if _endpoint(url)[1] == "responses" and client is not None:
            # A background response goes on without the connection (create says so; the
            # meter also sees it in the first event, as for retrieve(stream=True)).
            if body.get("background") is True:
                mark_background(request.core)
            mode = get_runtime().options.cancel_background
            request.after_close = BackgroundCancel(client, mode)
        return request


class OpenAIPatcher(Patcher):
    name = "openai"
    distribution = "openai"
    module = "openai"
    # 1.40.0 (chat Completions in a module, no Responses API) and the newest 3.x are both
    # tested: `make compat` and `make test`.
    supported = ("1.40", "4")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            *((module, path, helper_close) for module, path in _HELPERS),
            *((module, path, raw_response_close) for module, path in _RAW_RESPONSES),
        ]

    def after_patch(self) -> None:
        import openai._base_client as base_client
        import openai._streaming as streams

        install(_OpenAI(), self.layers, streams, base_client)

    def unpatch(self) -> None:
        super().unpatch()
        release(PROVIDER)
