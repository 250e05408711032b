"""``streamguard.guard(stream)``: guard one stream without patching anything."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from streamguard._engine.guards import GuardedAsyncIterator, GuardedIterator
from streamguard.providers._base import AsyncStreamGuard, SyncStreamGuard, handle_of, new_core
from streamguard.providers._calls import abort_closer, socket_abort

__all__ = ["guard"]


def _sdk_kind(stream: Any) -> tuple[str, bool] | None:
    """(provider, is_async) for an SDK stream object, None for anything else."""
    for provider in ("openai", "anthropic"):
        module = sys.modules.get(provider)
        if module is None:
            continue
        if isinstance(stream, module.Stream):
            return provider, False
        if isinstance(stream, module.AsyncStream):
            return provider, True
    return None


def guard(
    stream: Any,
    *,
    model: str | None = None,
    max_tokens: int | None = None,
    provider: str | None = None,
    attributes: Mapping[str, str | int | bool] | None = None,
) -> Any:
    """Guard one stream: an openai or anthropic ``Stream``/``AsyncStream``, or any (async)
    iterable, without ``instrument()``. Returns the guarded stream; a guarded stream is
    returned as it is. Example::

        stream = streamguard.guard(client.chat.completions.create(..., stream=True),
                                   model="gpt-4o")
        for chunk in stream:
            ...
    """
    if handle_of(stream) is not None or isinstance(stream, GuardedIterator | GuardedAsyncIterator):
        return stream
    kind = _sdk_kind(stream)
    if kind is None:
        if hasattr(stream, "__anext__") or (
            hasattr(stream, "__aiter__") and not hasattr(stream, "__iter__")
        ):
            return GuardedAsyncIterator(
                stream,
                provider=provider or "custom",
                model=model,
                max_tokens=max_tokens,
                attributes=attributes,
            )
        return GuardedIterator(
            stream,
            provider=provider or "custom",
            model=model,
            max_tokens=max_tokens,
            attributes=attributes,
        )
    sdk, is_async = kind
    core = new_core(sdk, {}, model=model, max_tokens=max_tokens)
    core.set_attributes(attributes or {})
    if sdk == "openai":
        from streamguard.providers.openai._meters import AutoMeter

        meter: Any = AutoMeter(core)
    else:
        from streamguard.providers.anthropic._patch import MessagesMeter

        meter = MessagesMeter(core)
    if is_async:
        core.bind_upstream(
            aclose=stream.response.aclose,
            abort=socket_abort(stream.response, core),
        )
        return AsyncStreamGuard(stream, core, meter)
    core.bind_upstream(close=abort_closer(stream.response, core))
    return SyncStreamGuard(stream, core, meter)
