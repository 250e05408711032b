"""Patch targets of the openai SDK and how its results are guarded."""

from __future__ import annotations

from typing import Any

from streamguard._runtime import get_runtime
from streamguard.providers._base import Patcher, in_guarded_call, new_core
from streamguard.providers._calls import Guarding, call_guarded, sdk_result_guard
from streamguard.providers.openai._meters import ChatMeter, ResponsesMeter

__all__ = ["OpenAIPatcher"]

PROVIDER = "openai"
# The package re-exports the chat Completions classes, defined in a module in older openai (1.40)
# and in a subpackage (``...chat.completions.completions``) in newer: the package finds both.
_CHAT = "openai.resources.chat"
_RESPONSES = "openai.resources.responses.responses"
_COMPLETIONS = "openai.resources.completions"
_HELPERS = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream.close"),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream.close"),
    ("openai.lib.streaming.responses._responses", "ResponseStream.close"),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream.close"),
)


def _max_tokens(kwargs: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = kwargs.get(key)
        if isinstance(value, int):
            return value
    return None


def _with_usage(kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Ask for exact usage when the caller did not; say whether to hide the extra chunk."""
    if not get_runtime().options.include_usage:
        return kwargs, False
    options = kwargs.get("stream_options")
    if isinstance(options, dict) and "include_usage" in options:
        return kwargs, False
    merged = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return {**kwargs, "stream_options": merged}, True


def _guard_result(guarding: Guarding) -> Any:
    import openai
    from openai._legacy_response import LegacyAPIResponse
    from openai._response import APIResponse, AsyncAPIResponse

    return sdk_result_guard(
        guarding,
        sync_types=(openai.Stream,),
        async_types=(openai.AsyncStream,),
        raw_types=(LegacyAPIResponse, APIResponse),
        async_raw_types=(AsyncAPIResponse,),
    )


def _is_streaming(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("stream") is True and not in_guarded_call()


def _streaming_call(operation: str, chunks: str) -> Any:
    """The wrapper of one streaming entry point: ``chunks`` is "chat" (chat and legacy
    completions chunks, with include_usage injected) or "responses" (Responses events)."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not _is_streaming(kwargs):
            return wrapped(*args, **kwargs)
        hide = False
        if chunks == "chat":
            kwargs, hide = _with_usage(kwargs)
        core = new_core(
            PROVIDER,
            kwargs,
            operation=operation,
            max_tokens=_max_tokens(kwargs),
            base_url=instance._client.base_url,
        )
        meter: Any = ChatMeter(core, hide) if chunks == "chat" else ResponsesMeter(core)
        return call_guarded(wrapped, args, kwargs, core, _guard_result(Guarding(core, meter)))

    return wrapper


_chat_create = _streaming_call("chat", "chat")
_completions_create = _streaming_call("text_completion", "chat")
_responses = _streaming_call("chat", "responses")


def _helper_close(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # openai's stream helpers close the response they captured, bypassing the raw stream
    # (PROVIDERS.md pitfall 6): route the close through the guard first.
    raw: Any = getattr(instance, "_raw_stream", None)
    if getattr(raw, "_self_driver", None) is not None:
        result = raw.close()
        if hasattr(result, "__await__"):
            return _then(result, wrapped, args, kwargs)
    return wrapped(*args, **kwargs)


async def _then(first: Any, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    await first
    return await wrapped(*args, **kwargs)


class OpenAIPatcher(Patcher):
    name = "openai"
    distribution = "openai"
    # 1.40.0 (chat Completions in a module, no Responses API) and the newest 3.x are both
    # tested: `make compat` and `make test`.
    supported = ("1.40", "4")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            (_CHAT, "Completions.create", _chat_create),
            (_CHAT, "AsyncCompletions.create", _chat_create),
            (_RESPONSES, "Responses.create", _responses),
            (_RESPONSES, "AsyncResponses.create", _responses),
            (_RESPONSES, "Responses.retrieve", _responses),
            (_RESPONSES, "AsyncResponses.retrieve", _responses),
            (_COMPLETIONS, "Completions.create", _completions_create),
            (_COMPLETIONS, "AsyncCompletions.create", _completions_create),
            *((module, path, _helper_close) for module, path in _HELPERS),
        ]
