"""Patch targets of the mistralai SDK (2.x and 3.x, imported as ``mistralai.client``).

Every streaming method sends its request at call time and returns an ``EventStream`` (sync) or
``EventStreamAsync`` whose ``response`` is the HTTP response: the guard is a proxy around it
that closes that response. Under other instrumentation's wrapper the guard goes in under that
wrapper (``guard_found``); a result that hides its stream gets no receipt and a warning.
``Chat.parse_stream`` calls ``Chat.stream`` (and the async twins likewise): the re-entrancy
guard makes that one stream, one receipt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streamguard.providers._base import Patcher, in_guarded_call, new_core
from streamguard.providers._calls import (
    Guarding,
    abort_closer,
    call_guarded,
    guard_found,
    socket_abort,
)
from streamguard.providers.mistral._meters import CompletionMeter, ConversationMeter

__all__ = ["MistralPatcher"]

PROVIDER = "mistral_ai"
_PACKAGE = "mistralai.client"


def _int(value: object) -> int | None:
    # mistralai marks absent arguments with an UNSET object: anything but an int is "none".
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _base_url(instance: Any, kwargs: Mapping[str, Any]) -> str | None:
    url = kwargs.get("server_url")
    if isinstance(url, str):
        return url
    try:
        return str(instance.sdk_configuration.get_server_details()[0])
    except Exception:  # an SDK configuration StreamGuard does not know: no server attributes
        return None


# What a call asks for: (operation, model, max_tokens), from its keyword arguments.
Describe = Callable[[Mapping[str, Any]], tuple[str, str | None, int | None]]


def _wrapper(meter_type: type[CompletionMeter | ConversationMeter], describe: Describe) -> Any:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if in_guarded_call():
            return wrapped(*args, **kwargs)
        operation, model, max_tokens = describe(kwargs)
        core = new_core(
            PROVIDER,
            kwargs,
            operation=operation,
            model=model,
            max_tokens=max_tokens,
            base_url=_base_url(instance, kwargs),
        )
        guarding = Guarding(core, meter_type(core))
        return call_guarded(wrapped, args, kwargs, core, _guard_result(guarding))

    return wrapper


def _guard_result(guarding: Guarding) -> Callable[[Any], Any]:
    from mistralai.client.utils.eventstreaming import EventStream, EventStreamAsync

    core = guarding.core

    def is_stream(result: Any) -> bool:
        # The class itself, not isinstance: a wrapt proxy passes isinstance, and its stream is
        # guarded under it instead (guard_found).
        return issubclass(type(result), (EventStream, EventStreamAsync))

    def guard(stream: Any) -> Any:
        response = stream.response
        if isinstance(stream, EventStreamAsync):
            return guarding.async_stream(stream, response.aclose, socket_abort(response, core))
        return guarding.sync_stream(stream, abort_closer(response, core))

    return lambda result: guard_found(result, core, is_stream, guard)


def _completion(operation: str) -> Describe:
    def describe(kwargs: Mapping[str, Any]) -> tuple[str, str | None, int | None]:
        return operation, _str(kwargs.get("model")), _int(kwargs.get("max_tokens"))

    return describe


def _conversation(kwargs: Mapping[str, Any]) -> tuple[str, str | None, int | None]:
    # A conversation started with an agent_id invokes that agent; otherwise it is a chat with a
    # model (append and restart name neither: the conversation's own model answers).
    operation = "invoke_agent" if _str(kwargs.get("agent_id")) else "chat"
    args = kwargs.get("completion_args")
    if isinstance(args, Mapping):
        max_tokens = _int(args.get("max_tokens"))
    else:
        max_tokens = _int(getattr(args, "max_tokens", None))
    return operation, _str(kwargs.get("model")), max_tokens


class MistralPatcher(Patcher):
    name = "mistral_ai"
    distribution = "mistralai"
    module = "mistralai"
    # ``mistralai.client`` with EventStream(Async) from 2.0 (httpx) to 3.x (httpx2); tested on
    # 2.0.0, 3.0.0 and 3.7.0 (tests/providers, make compat). 1.x has another module layout.
    supported = ("2.0", "4")

    def targets(self) -> list[tuple[str, str, Any]]:
        chat = _wrapper(CompletionMeter, _completion("chat"))
        fim = _wrapper(CompletionMeter, _completion("text_completion"))
        agent = _wrapper(CompletionMeter, _completion("invoke_agent"))
        conversation = _wrapper(ConversationMeter, _conversation)
        found: list[tuple[str, str, Any]] = []
        for suffix in ("", "_async"):
            found += [
                (f"{_PACKAGE}.chat", f"Chat.stream{suffix}", chat),
                (f"{_PACKAGE}.fim", f"Fim.stream{suffix}", fim),
                (f"{_PACKAGE}.agents", f"Agents.stream{suffix}", agent),
                *(
                    (
                        f"{_PACKAGE}.conversations",
                        f"Conversations.{name}_stream{suffix}",
                        conversation,
                    )
                    for name in ("start", "append", "restart")
                ),
            ]
        return found
