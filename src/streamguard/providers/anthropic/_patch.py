"""anthropic: every SSE stream, guarded in place where the client builds it (``_stainless``).

Messages (and beta messages), ``create(stream=True)`` and the ``.stream()`` helpers alike: the
helper's own type is kept (``type(stream) is BetaMessageStream``) because the guard sits on
the raw ``Stream`` inside it. anthropic 0.x gives ``Stream`` a metaclass whose ``isinstance``
accepts only the exact class (PROVIDERS.md pitfall 10): in place, the stream is that class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamguard._engine.core import NOT_A_UNIT, StreamCore
from streamguard._engine.drivers import Meter
from streamguard.providers._base import Patcher
from streamguard.providers._stainless import (
    StainlessSdk,
    helper_close,
    install,
    raw_response_close,
    release,
)
from streamguard.providers.anthropic._sessions import SessionEventsMeter

__all__ = ["AnthropicPatcher", "MessagesMeter"]

PROVIDER = "anthropic"
#: Request path -> operation; streams are metered as message events (other event kinds pass
#: through uncounted), managed-agent session events by their own meter.
ENDPOINTS: list[tuple[str, str]] = [
    ("/v1/messages", "chat"),
    ("/v1/complete", "text_completion"),
    ("/v1/sessions", "invoke_agent"),  # sessions (and threads, bedrock) events.stream()
]
# 0.x helpers close the HTTP response themselves, bypassing their raw stream (pitfall 6);
# later ones call the raw stream's close, which the wrapper then leaves to them.
_HELPERS = (
    ("anthropic.lib.streaming._messages", "MessageStream.close"),
    ("anthropic.lib.streaming._messages", "AsyncMessageStream.close"),
    ("anthropic.lib.streaming._beta_messages", "BetaMessageStream.close"),
    ("anthropic.lib.streaming._beta_messages", "BetaAsyncMessageStream.close"),
)
_RAW_RESPONSES = (
    ("anthropic._response", "APIResponse.close"),
    ("anthropic._response", "AsyncAPIResponse.close"),
    ("anthropic._legacy_response", "LegacyAPIResponse.close"),
)


class MessagesMeter:
    """Message stream events: content deltas are units; ``message_delta`` carries the final,
    cumulative output count; ``message_start`` the input tokens (known even when cut)."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, event: Any) -> int:
        try:  # attribute reads, not getattr calls: this runs on every chunk
            kind = event.type
        except AttributeError:
            return NOT_A_UNIT
        if kind == "content_block_delta":
            delta = event.delta
            try:
                dkind = delta.type
            except AttributeError:
                dkind = None
            if dkind == "text_delta":
                text = delta.text
            elif dkind == "input_json_delta":
                text = delta.partial_json
            else:
                text = (
                    getattr(delta, "text", None)
                    or getattr(delta, "partial_json", None)
                    or getattr(delta, "thinking", None)
                )
            return (len(text) + 2) >> 2 or 1 if text else 1  # estimate_tokens, inlined
        core = self.core
        if kind == "message_start":
            message = event.message
            core.response_id = message.id
            core.response_model = message.model
            usage = message.usage
            if usage is not None:
                # Anthropic's input_tokens exclude cache reads and writes; the receipt counts
                # all input, with cache reads priced as such (writes at the input price).
                read = getattr(usage, "cache_read_input_tokens", None) or 0
                written = getattr(usage, "cache_creation_input_tokens", None) or 0
                core.set_usage(
                    input_tokens=usage.input_tokens + read + written, cached_input_tokens=read
                )
        elif kind == "message_delta":
            if event.delta.stop_reason:
                core.finish_reasons.append(event.delta.stop_reason)
            if event.usage is not None:
                core.set_usage(output_tokens=event.usage.output_tokens)
        return NOT_A_UNIT

    @staticmethod
    def text(event: Any) -> str | None:
        if getattr(event, "type", None) != "content_block_delta":
            return None
        return getattr(event.delta, "text", None)


class _Anthropic(StainlessSdk):
    provider = PROVIDER

    def endpoint(self, url: str, hidden: bool) -> tuple[str, Callable[[StreamCore], Meter]]:
        operation = next((op for path, op in ENDPOINTS if url.startswith(path)), "chat")
        return operation, SessionEventsMeter if operation == "invoke_agent" else MessagesMeter


class AnthropicPatcher(Patcher):
    name = "anthropic"
    distribution = "anthropic"
    module = "anthropic"
    # Every release line: 0.x (0.40 to 0.125, whose Stream passes isinstance only as the exact
    # class), 1.x and 2.x; the ends of each are tested in `make compat`.
    supported = ("0.40", "3")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            *((module, path, helper_close) for module, path in _HELPERS),
            *((module, path, raw_response_close) for module, path in _RAW_RESPONSES),
        ]

    def after_patch(self) -> None:
        import anthropic._base_client as base_client
        import anthropic._streaming as streams

        install(_Anthropic(), self.layers, streams, base_client)

    def unpatch(self) -> None:
        super().unpatch()
        release(PROVIDER)
