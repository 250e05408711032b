"""Patch targets of the anthropic SDK, its meter, and the MessageStream helper."""

from __future__ import annotations

from typing import Any

from streamguard._engine.core import NOT_A_UNIT, StreamCore
from streamguard._engine.reasons import StopReason
from streamguard._money.estimate import estimate_tokens
from streamguard.providers._base import (
    AsyncStreamGuard,
    ObjectProxy,
    Patcher,
    SyncStreamGuard,
    fail_core,
    in_guarded_call,
    new_core,
)
from streamguard.providers._calls import (
    Guarding,
    abort_closer,
    call_guarded,
    sdk_result_guard,
    socket_abort,
)

__all__ = ["AnthropicPatcher", "MessagesMeter"]

PROVIDER = "anthropic"
_MODULES = ("anthropic.resources.messages.messages", "anthropic.resources.beta.messages.messages")


class MessagesMeter:
    """Message stream events: content deltas are units; ``message_delta`` carries the final,
    cumulative output count; ``message_start`` the input tokens (known even when cut)."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, event: Any) -> int:
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            text = (
                getattr(delta, "text", None)
                or getattr(delta, "partial_json", None)
                or getattr(delta, "thinking", None)
            )
            return estimate_tokens(text) or 1
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
        if event.type != "content_block_delta":
            return None
        return getattr(event.delta, "text", None)


def _start(instance: Any, kwargs: dict[str, Any]) -> tuple[StreamCore, Guarding]:
    max_tokens = kwargs.get("max_tokens")
    core = new_core(
        PROVIDER,
        kwargs,
        operation="chat",
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        base_url=instance._client.base_url,
    )
    return core, Guarding(core, MessagesMeter(core))


def _types() -> dict[str, tuple[type, ...]]:
    import anthropic
    from anthropic._response import APIResponse, AsyncAPIResponse

    return {
        "sync_types": (anthropic.Stream,),
        "async_types": (anthropic.AsyncStream,),
        "raw_types": (APIResponse,),
        "async_raw_types": (AsyncAPIResponse,),
    }


def _create(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs.get("stream") is not True or in_guarded_call():
        return wrapped(*args, **kwargs)
    core, guarding = _start(instance, kwargs)
    return call_guarded(wrapped, args, kwargs, core, sdk_result_guard(guarding, **_types()))


def _stream(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # ``.stream()`` posts by itself, not through ``create`` (PROVIDERS.md): guard on enter.
    manager = wrapped(*args, **kwargs)
    if in_guarded_call():
        return manager
    return MessageStreamManagerGuard(manager, instance, kwargs)


class MessageStreamManagerGuard(ObjectProxy):
    """Puts the guard inside the MessageStream (its ``_raw_stream``), so ``text_stream``,
    ``get_final_message()``, ``until_done()`` and ``close()`` all pass through it."""

    def __init__(self, manager: Any, instance: Any, kwargs: dict[str, Any]) -> None:
        super().__init__(manager)
        self._self_instance = instance
        self._self_kwargs = kwargs

    def __enter__(self) -> Any:
        core, guarding = _start(self._self_instance, self._self_kwargs)
        try:
            helper = self.__wrapped__.__enter__()
            raw = helper._raw_stream
            core.bind_upstream(close=abort_closer(raw.response, core))
            helper._raw_stream = SyncStreamGuard(raw, core, guarding.meter)
        except BaseException as exc:
            fail_core(core, exc)
            raise
        return SyncHelperGuard(helper, core)

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)

    async def __aenter__(self) -> Any:
        core, guarding = _start(self._self_instance, self._self_kwargs)
        try:
            helper = await self.__wrapped__.__aenter__()
            raw = helper._raw_stream
            core.bind_upstream(
                aclose=raw.response.aclose,
                abort=socket_abort(raw.response, core),
            )
            helper._raw_stream = AsyncStreamGuard(raw, core, guarding.meter)
        except BaseException as exc:
            fail_core(core, exc)
            raise
        return AsyncHelperGuard(helper, core)

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)


class SyncHelperGuard(ObjectProxy):
    """The MessageStream the application holds: dropping it closes the upstream at once
    (the helper itself is in a reference cycle that only the cyclic GC would break)."""

    def __init__(self, helper: Any, core: StreamCore) -> None:
        super().__init__(helper)
        self._self_core = core

    # Iteration goes to the helper, whose raw stream is guarded (wrapt would forward
    # __iter__ to the helper's own generator method and return it unguarded by this proxy).
    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.__wrapped__.__next__()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.__wrapped__.close()

    def __del__(self) -> None:
        if self._self_core.stop_reason is None:
            self._self_core.request_stop(
                StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended"
            )


class AsyncHelperGuard(ObjectProxy):
    """The AsyncMessageStream the application holds; see ``SyncHelperGuard``."""

    def __init__(self, helper: Any, core: StreamCore) -> None:
        super().__init__(helper)
        self._self_core = core

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        return await self.__wrapped__.__anext__()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.__wrapped__.close()

    def __del__(self) -> None:
        if self._self_core.stop_reason is None:
            self._self_core.request_stop(
                StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended"
            )


class AnthropicPatcher(Patcher):
    name = "anthropic"
    distribution = "anthropic"
    # anthropic 0.x releases (seen in 0.121) give Stream an exact-class metaclass that no
    # proxy passes isinstance on; 2.x has a plain one (PROVIDERS.md pitfall 10).
    supported = ("2.0", "3")

    def targets(self) -> list[tuple[str, str, Any]]:
        found: list[tuple[str, str, Any]] = []
        for module in _MODULES:
            found += [
                (module, "Messages.create", _create),
                (module, "AsyncMessages.create", _create),
                (module, "Messages.stream", _stream),
                (module, "AsyncMessages.stream", _stream),
            ]
        return found
