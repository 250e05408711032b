"""Guards for any iterator or async iterator plus a close callable (the upstream)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from streamguard._engine import ports
from streamguard._engine.core import StreamCore
from streamguard._engine.drivers import Meter
from streamguard._engine.handle import StreamHandle
from streamguard._engine.holdback import async_driver, sync_driver
from streamguard._engine.reasons import StopReason
from streamguard._engine.watchdog import Timers

__all__ = ["GuardedAsyncIterator", "GuardedIterator"]

T = TypeVar("T")
_UNSET: Any = object()


def _new_core(
    provider: str,
    model: str | None,
    operation: str,
    max_tokens: int | None,
    attributes: Mapping[str, str | int | bool] | None,
    runtime: Any,
) -> StreamCore:
    if runtime is None:
        runtime = ports.host()
    core = StreamCore(
        runtime,
        provider=provider,
        model=model,
        operation=operation,
        request_max_tokens=max_tokens,
        attributes=attributes,
    )
    runtime.begin(core)
    core.text_of = _text_of
    return core


def _text_of(item: object) -> str | None:
    return item if isinstance(item, str) else None


def _timers(runtime: Any, stall: Any, deadline: Any, idle: Any) -> Timers | None:
    opts = runtime.options
    return Timers.of(
        opts.stall_timeout if stall is _UNSET else stall,
        opts.deadline if deadline is _UNSET else deadline,
        opts.idle_timeout if idle is _UNSET else idle,
    )


class GuardedIterator(StreamHandle, Generic[T]):
    """A sync iterator under a guard.

    ``close`` (default: the iterator's own ``close``) is the upstream: it runs exactly once,
    whichever way the stream ends. Example::

        guarded = GuardedIterator(token_generator(), provider="custom", model="m")
        for token in guarded:
            ...
        print(guarded.receipt)
    """

    __slots__ = ("__weakref__", "_driver")

    def __init__(
        self,
        iterable: Iterable[T],
        *,
        close: Callable[[], object] | None = None,
        provider: str = "custom",
        model: str | None = None,
        operation: str = "chat",
        max_tokens: int | None = None,
        meter: Meter | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
        stall_timeout: float | None = _UNSET,
        deadline: float | None = _UNSET,
        idle_timeout: float | None = _UNSET,
        runtime: Any = None,
    ) -> None:
        core = _new_core(provider, model, operation, max_tokens, attributes, runtime)
        super().__init__(core)
        iterator = iter(iterable)
        core.bind_upstream(close=close if close is not None else getattr(iterator, "close", None))
        self._driver = sync_driver(core, iterator, meter)
        core.runtime.watch(core, _timers(core.runtime, stall_timeout, deadline, idle_timeout))

    def __iter__(self) -> GuardedIterator[T]:
        return self

    def __next__(self) -> T:
        return self._driver.next()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Always closes the upstream; a second call is a no-op."""
        self._driver.close()

    def __enter__(self) -> GuardedIterator[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._driver.close()

    def __del__(self) -> None:
        core = self._core
        if core.stop_reason is None:
            core.request_stop(StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended")


class GuardedAsyncIterator(StreamHandle, Generic[T]):
    """An async iterator under a guard; ``aclose`` (default: the iterator's) is the upstream."""

    __slots__ = ("__weakref__", "_driver")

    def __init__(
        self,
        iterable: AsyncIterable[T],
        *,
        aclose: Callable[[], Awaitable[object]] | None = None,
        provider: str = "custom",
        model: str | None = None,
        operation: str = "chat",
        max_tokens: int | None = None,
        meter: Meter | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
        stall_timeout: float | None = _UNSET,
        deadline: float | None = _UNSET,
        idle_timeout: float | None = _UNSET,
        runtime: Any = None,
    ) -> None:
        core = _new_core(provider, model, operation, max_tokens, attributes, runtime)
        super().__init__(core)
        iterator = aiter(iterable)
        closer = aclose if aclose is not None else getattr(iterator, "aclose", None)
        core.bind_upstream(aclose=closer or _nothing)
        self._driver = async_driver(core, iterator, meter)
        core.runtime.watch(core, _timers(core.runtime, stall_timeout, deadline, idle_timeout))

    def __aiter__(self) -> GuardedAsyncIterator[T]:
        return self

    def __anext__(self) -> Awaitable[T]:
        # The driver's coroutine itself, not one wrapping it: one frame less per unit.
        return self._driver.next()

    async def aclose(self) -> None:
        """Always closes the upstream, even when cancelled; a second call is a no-op."""
        await self._driver.aclose()

    async def __aenter__(self) -> GuardedAsyncIterator[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._driver.aclose()

    def __del__(self) -> None:
        core = self._core
        if core.stop_reason is None:
            core.request_stop(StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended")


async def _nothing() -> None:
    return None
