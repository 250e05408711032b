"""``StreamSession``: the seed API for custom producers, on the same engine as the guards.

A producer is any object with ``async def run(*, out_q, cancel_event, stats)``. It puts
tokens into ``out_q`` (bounded by N: it waits when the consumer falls behind), stops when
``cancel_event`` is set, and may raise (the stream then ends as ``upstream_error``). A producer
that ignores ``cancel_event`` is cancelled after ``cancel_grace`` seconds and the receipt says
so. Example::

    session = StreamSession(producer=MyProducer(), N=5, M=2, stats={})
    session.start()
    async for token in session:
        print(token, end="")
    receipt = await session.shutdown()
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from streamguard._engine import ports
from streamguard._engine.core import StreamCore
from streamguard._engine.drivers import stop_error
from streamguard._engine.estimate import estimate_tokens
from streamguard._engine.handle import StreamHandle, to_reason
from streamguard._engine.loopthread import background_loop
from streamguard._engine.reasons import StopReason
from streamguard._engine.watchdog import Timers
from streamguard._receipts.model import Receipt

__all__ = ["Producer", "StreamSession"]

_END = object()
_UNSET: Any = object()


class Producer(Protocol):
    async def run(
        self, *, out_q: asyncio.Queue[Any], cancel_event: asyncio.Event, stats: dict[str, Any]
    ) -> None: ...


class _CountingQueue(asyncio.Queue[Any]):
    """``out_q``: an asyncio.Queue that counts what the producer puts, at the moment it is put.

    After the cutoff a put is counted as ``post_cutoff`` and dropped, never handed over.
    """

    def __init__(self, maxsize: int, core: StreamCore, tokens_of: Callable[[Any], int]) -> None:
        super().__init__(maxsize)
        self._core = core
        self._tokens_of = tokens_of

    def _init(self, maxsize: int) -> None:
        self._queue: collections.deque[Any] = collections.deque()

    def _put(self, item: Any) -> None:
        if item is _END:
            self._queue.append((item, 0))
            return
        tokens = self._tokens_of(item)
        if self._core.produce(tokens, item):
            self._queue.append((item, tokens))

    def _get(self) -> Any:
        return self._queue.popleft()


class StreamSession(StreamHandle):
    """One producer's stream under a guard: bounded, counted, cancellable, with a receipt.

    ``N`` (default ``max_buffered``) bounds units produced but not yet taken; ``M`` (default
    ``max_inflight``) bounds units taken but not yet acknowledged (``async for`` acknowledges
    a unit when it asks for the next one; ``get()`` plus ``ack()`` do it explicitly).
    ``stats`` is updated live.
    """

    __slots__ = (
        "M",
        "N",
        "__weakref__",
        "_acked",
        "_errored",
        "_grace",
        "_loop",
        "_producer",
        "_queue",
        "_started",
        "_timers",
        "_tokens_of",
        "_upstream",
        "stats",
    )

    def __init__(
        self,
        producer: Producer,
        N: int | None = None,
        M: int | None = None,
        stats: dict[str, Any] | None = None,
        *,
        provider: str = "custom",
        model: str | None = None,
        max_tokens: int | None = None,
        attributes: Mapping[str, str | int | bool] | None = None,
        tokens_of: Callable[[Any], int] | None = None,
        stall_timeout: float | None = _UNSET,
        deadline: float | None = _UNSET,
        idle_timeout: float | None = _UNSET,
        cancel_grace: float | None = None,
        runtime: Any = None,
    ) -> None:
        if runtime is None:
            runtime = ports.host()
        opts = runtime.options
        # Unset bounds come from the configuration (STREAMGUARD_MAX_BUFFERED / _MAX_INFLIGHT).
        N = opts.max_buffered if N is None else N
        M = opts.max_inflight if M is None else M
        if N < 1 or M < 1:
            raise ValueError("N and M must be at least 1.")
        core = StreamCore(
            runtime,
            provider=provider,
            model=model,
            operation="chat",
            request_max_tokens=max_tokens,
            attributes=attributes,
        )
        core.consume_on_next = False  # acknowledgements count consumption (``consume``)
        runtime.begin(core)
        core.text_of = _text_of
        if core.async_checks is not None:
            from streamguard.exceptions import ConfigurationError

            raise ConfigurationError(
                "StreamSession runs policy checks as tokens are put: use a sync check function."
            )
        super().__init__(core)
        self._producer = producer
        self.N, self.M = N, M
        self.stats: dict[str, Any] = stats if stats is not None else {}
        self._tokens_of = tokens_of or _default_tokens
        self._timers = Timers.of(
            opts.stall_timeout if stall_timeout is _UNSET else stall_timeout,
            opts.deadline if deadline is _UNSET else deadline,
            opts.idle_timeout if idle_timeout is _UNSET else idle_timeout,
        )
        self._grace = opts.cancel_grace if cancel_grace is None else cancel_grace
        self._started = False
        self._errored = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._upstream: _ProducerUpstream | None = None
        self._update_stats()

    # ------------------------------------------------------------------- lifecycle
    def start(self) -> StreamSession:
        """Start the producer: on the running loop, or on a background loop if there is none."""
        if self._started:
            return self
        self._started = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = background_loop()
            asyncio.run_coroutine_threadsafe(self._start_on_loop(), loop).result()
        else:
            self._start_now(loop)
        return self

    async def _start_on_loop(self) -> None:
        self._start_now(asyncio.get_running_loop())

    def _start_now(self, loop: asyncio.AbstractEventLoop) -> None:
        core = self._core
        self._loop = loop
        self._queue = _CountingQueue(self.N, core, self._tokens_of)
        self._acked = asyncio.Event()
        upstream = _ProducerUpstream(core, self._producer, self._queue, self.stats, self._grace)
        self._upstream = upstream
        core.bind_upstream(aclose=upstream.stop, loop=loop)
        upstream.task = loop.create_task(upstream.run())
        core.runtime.watch(core, self._timers)

    # ------------------------------------------------------------------- consuming
    def __aiter__(self) -> StreamSession:
        return self

    async def __anext__(self) -> Any:
        core = self._core
        if core._pending:
            core.consume(len(core._pending))
        return await self.get()

    async def get(self) -> Any:
        """Take the next token without acknowledging it (see ``ack``); waits while M are out."""
        if not self._started:
            self.start()
        core = self._core
        while core.inflight >= self.M and core.stop_reason is None:
            # Another task acknowledges (an ASGI sender, say): wait for it, or for the stop.
            self._acked.clear()
            await self._acked.wait()
        if core.stop_reason is not None:
            self._raise_stopped()
        core.in_read = True
        try:
            item, tokens = await self._queue.get()
        except BaseException:
            core.in_read = False
            if core.stop_reason is None:
                core.request_stop(StopReason.CONSUMER_CANCELLED, "the consumer was cancelled")
            raise
        core.in_read = False
        if item is _END:
            if core.stop_reason is None:
                core.request_stop(StopReason.COMPLETED)
            self._update_stats()
            self._raise_stopped()
        if not core.commit(tokens):
            self._raise_stopped()
        self._update_stats()
        return item

    def ack(self, units: int = 1) -> int:
        """Acknowledge ``units`` taken tokens as consumed; returns how many were."""
        done = self._core.consume(units)
        if self._started:
            self._acked.set()
        self._update_stats()
        return done

    def _raise_stopped(self) -> None:
        error = None if self._errored else stop_error(self._core)
        self._errored = True
        if error is not None:
            raise error
        raise StopAsyncIteration

    # Sync iteration, for sessions running on the background loop.
    def __iter__(self) -> StreamSession:
        return self

    def __next__(self) -> Any:
        loop = self._loop if self._started else None
        if loop is None:
            self.start()
            loop = self._loop
        assert loop is not None
        try:
            return asyncio.run_coroutine_threadsafe(self.__anext__(), loop).result()
        except StopAsyncIteration:
            raise StopIteration from None

    # ------------------------------------------------------------------- stopping
    def cancel(
        self, reason: StopReason | str = StopReason.MANUAL, detail: str | None = None
    ) -> bool:
        """Cut accounting and lifecycle at once. Idempotent; safe from any thread."""
        stopped = self._core.request_stop(
            to_reason(reason), detail or "cancelled by the application"
        )
        if not self._started:  # never started: nothing to close, seal now
            self._core._closed()
        self._update_stats()
        return stopped

    async def shutdown(self) -> Receipt | None:
        """End the producer and every background task; return the receipt."""
        core = self._core
        if core.stop_reason is None:
            self.cancel(StopReason.SHUTDOWN, "the session was shut down")
        loop = self._loop
        if loop is not None and loop is not asyncio.get_running_loop():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._wait_end(), loop))
        else:
            await self._wait_end()
        self._update_stats()
        return core.receipt

    def shutdown_sync(self, timeout: float | None = 10.0) -> Receipt | None:
        """``shutdown()`` for code outside any event loop (sessions on the background loop)."""
        if self._core.stop_reason is None:
            self.cancel(StopReason.SHUTDOWN, "the session was shut down")
        receipt = self._core.wait_final(timeout)
        self._update_stats()
        return receipt

    async def _wait_end(self) -> None:
        await self._core.wait_final_async()
        task = self._upstream.task if self._upstream is not None else None
        if task is not None and not task.done():
            await asyncio.wait({task})

    def __del__(self) -> None:
        # The consumer dropped the session without ending it: the only signal it gives.
        core = self._core
        if core.stop_reason is None:
            core.request_stop(StopReason.CONSUMER_CLOSED, "the session was dropped before it ended")

    def _update_stats(self) -> None:
        core = self._core
        stats = self.stats
        stats["stream_id"] = core.stream_id
        stats["produced"] = core.produced
        stats["committed"] = core.committed
        stats["consumed"] = core.consumed
        stats["post_cutoff"] = core.post_cutoff
        stats["buffered"] = core.produced - core.committed
        stats["inflight"] = core.inflight
        stats["reason"] = None if core.stop_reason is None else str(core.stop_reason)


class _ProducerUpstream:
    """The session's upstream: runs the producer and stops it. Never references the session,
    so a session the consumer drops can be collected, and its finaliser stop the producer."""

    __slots__ = ("cancel_event", "core", "grace", "producer", "queue", "stats", "task")

    def __init__(
        self,
        core: StreamCore,
        producer: Producer,
        queue: _CountingQueue,
        stats: dict[str, Any],
        grace: float,
    ) -> None:
        self.core, self.producer, self.queue, self.stats, self.grace = (
            core,
            producer,
            queue,
            stats,
            grace,
        )
        self.cancel_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _end(self) -> None:
        # The end marker bypasses the bound: it must never wait for room.
        queue: Any = self.queue
        queue._queue.append((_END, 0))
        queue._wakeup_next(queue._getters)

    async def run(self) -> None:
        core = self.core
        try:
            await self.producer.run(
                out_q=self.queue, cancel_event=self.cancel_event, stats=self.stats
            )
        except asyncio.CancelledError:
            if core.stop_reason is None:
                core.request_stop(StopReason.UPSTREAM_ERROR, "the producer was cancelled")
            raise
        except Exception as exc:
            core.request_stop(
                StopReason.UPSTREAM_ERROR, f"the producer raised {type(exc).__name__}", error=exc
            )
        self._end()

    async def stop(self) -> None:
        """Signal the producer; cancel it if it ignores ``cancel_event`` past the grace."""
        self.cancel_event.set()
        # Drop what is buffered (it stays counted as produced, never handed over), free a
        # producer waiting for room, and wake a consumer waiting for a token.
        queue: Any = self.queue
        queue._queue.clear()
        while queue._putters:
            queue._wakeup_next(queue._putters)
        self._end()
        task = self.task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=self.grace)
        if not done:
            core = self.core
            core.detail = (
                f"{core.detail or core.stop_reason}; the producer ignored cancel_event "
                f"and was cancelled after {self.grace:g} s"
            )
            task.cancel()
            await asyncio.wait({task})


def _text_of(item: Any) -> str | None:
    return item if isinstance(item, str) else None


def _default_tokens(item: Any) -> int:
    return estimate_tokens(item) if isinstance(item, str) else 1
