"""The event loops the provider suite runs on: asyncio (always), uvloop and trio (on request).

``STREAMGUARD_TEST_LOOPS`` names them (default ``asyncio``; ``make test-loops`` runs
``uvloop,trio``). Every async test of this package is run by ``run`` on each loop named, a
fresh loop per test, so the same scenarios prove the same guarantees everywhere; sync cases do
not touch an event loop (they run in a worker thread) and run on asyncio only.

The helpers below are what a test needs from its loop, written once for all of them: the
native primitives of the loop that runs (an asyncio task and ``task.cancel()``, a trio nursery
and its cancel scope), as an application on that loop would use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest
import sniffio

__all__ = [
    "LOOPS",
    "cancel_when",
    "fail_after",
    "is_trio",
    "run",
    "run_failing",
    "sleep",
    "to_thread",
]

T = TypeVar("T")
KNOWN = ("asyncio", "uvloop", "trio")
LOOPS = tuple(
    name.strip()
    for name in os.environ.get("STREAMGUARD_TEST_LOOPS", "asyncio").split(",")
    if name.strip()
)
if unknown := set(LOOPS) - set(KNOWN):
    raise ValueError(f"STREAMGUARD_TEST_LOOPS: unknown loops {sorted(unknown)}; use {KNOWN}")


_UNEXHAUSTED = "Async generator .* was garbage collected before it had been exhausted"


def run(loop: str, fn: Callable[..., Awaitable[None]], /, **kwargs: Any) -> None:
    """Run the test coroutine ``fn(**kwargs)`` on a new ``loop``; close its cases there."""

    async def main() -> None:
        try:
            await fn(**kwargs)
        finally:
            for value in kwargs.values():
                aclose = getattr(value, "aclose_for_test", None)
                if aclose is not None:
                    await aclose()

    if loop == "trio":
        import trio

        with warnings.catch_warnings():
            # trio warns when an async generator is collected unexhausted: the SDKs' streams
            # are async generators, and a consumer that breaks out of one and drops it makes
            # trio warn, with or without StreamGuard (the SDK's generator is not the guard's
            # to finish). Every other warning stays an error.
            warnings.filterwarnings("ignore", _UNEXHAUSTED, ResourceWarning)
            trio.run(main)
        return
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def is_trio() -> bool:
    return sniffio.current_async_library() == "trio"


async def sleep(seconds: float) -> None:
    await anyio.sleep(seconds)


async def to_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; this loop keeps running meanwhile."""
    return await anyio.to_thread.run_sync(fn, *args)


@contextlib.asynccontextmanager
async def fail_after(seconds: float) -> AsyncIterator[None]:
    """The loop's own timeout around a block (``asyncio.timeout``, ``trio.fail_after``): the
    block is cancelled where it waits; ``TimeoutError`` either way."""
    if is_trio():
        import trio

        try:
            with trio.fail_after(seconds):
                yield
        except trio.TooSlowError:
            raise TimeoutError from None
    else:
        async with asyncio.timeout(seconds):
            yield


async def cancel_when(consumer: Callable[[], Awaitable[None]], ready: anyio.Event) -> int:
    """Run ``consumer`` in a task of its own and cancel that task once ``ready`` is set, as an
    application would on this loop (``task.cancel()``; a trio nursery's cancel scope). Returns
    ``time.monotonic_ns()`` read just before the cancel; returns when the task has ended."""
    if is_trio():
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            with trio.fail_after(3.0):
                await ready.wait()
            t_stop = time.monotonic_ns()
            nursery.cancel_scope.cancel()
        return t_stop
    task = asyncio.ensure_future(consumer())
    await asyncio.wait_for(ready.wait(), 3.0)
    t_stop = time.monotonic_ns()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    return t_stop


async def run_failing(consumer: Callable[[], Awaitable[None]], error: type[BaseException]) -> Any:
    """Run ``consumer``, which raises ``error``, in a task of its own; returns what keeps the
    exception (and so its traceback and the consumer's frame) alive: the asyncio task, or the
    trio nursery's exception group."""
    if is_trio():
        import trio

        with pytest.raises(BaseExceptionGroup) as info:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer)
        assert info.value.subgroup(error) is not None, info.value
        return info.value
    task = asyncio.ensure_future(consumer())
    with contextlib.suppress(error):
        await task
    assert isinstance(task.exception(), error)
    return task
