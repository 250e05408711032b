"""The event loop an async stream lives on: asyncio (any loop, uvloop included) or trio.

A stream's *home* is found once, when its async upstream is bound (``current_home()``, with
sniffio), and everything the engine does on an event loop goes through it: run a callback on
the loop from any thread, start the task that closes the upstream, watch the task that iterates
the stream, wait for the receipt, and the stream timers (``LoopTimers``, one alarm per loop).
Nothing on the per-chunk path asks which library runs: the driver keeps the home's
``current_task`` function.

- asyncio: ``call_soon_threadsafe``, ``create_task``, task done callbacks, ``call_later``.
- trio: the run's ``TrioToken.run_sync_soon``, system tasks (not cancelled with the consumer),
  a per-run ``Instrument`` whose ``task_exited`` is the end of the iterating task, and one
  system task that sleeps until the next alarm.

Every home is cached per loop (per trio run), so that the streams of one loop share its timers.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore
    from streamguard._engine.looptimers import LoopTimers

__all__ = ["AsyncioHome", "Home", "TrioHome", "asyncio_home", "current_home", "home_here"]


class Home:
    """What the engine needs from one event loop. Methods marked *loop* run on it only."""

    name = "?"
    #: The current task of this loop's library (per chunk: must be cheap).
    current_task: Callable[[], Any]
    timers: LoopTimers

    def task_getter(self) -> Callable[[], Any]:
        """*loop*: this loop's current task, in the cheapest form that a stream's driver can
        keep for its life and call per chunk (it may hold the loop; the home does not)."""
        return self.current_task

    def here(self) -> bool:
        """True if the caller runs on this loop (its thread, inside it)."""
        raise NotImplementedError

    def closed(self) -> bool:
        raise NotImplementedError

    def running(self) -> bool:
        """True if the loop runs now (from any thread): its timers and callbacks can fire. A
        loop stopped between ``run_until_complete`` calls, closed, or whose thread is gone
        does not; a loop that runs late does."""
        raise NotImplementedError

    def run_soon(self, fn: Callable[[], object]) -> bool:
        """Call ``fn`` on the loop soon, from any thread; False if the loop is gone."""
        raise NotImplementedError

    def spawn(self, async_fn: Callable[[], Awaitable[object]]) -> None:
        """*loop*: run ``async_fn()`` in a task of its own, not cancelled with the caller."""
        raise NotImplementedError

    def follow(self, task: Any, core: StreamCore) -> Any:
        """*loop*: watch ``task``'s end for ``core``; returns what ``unfollow`` needs."""
        raise NotImplementedError

    def unfollow(self, task: Any, token: Any) -> None:
        """*loop*: stop watching (a stream's end must not leave anything on its task)."""
        raise NotImplementedError

    def set_alarm(self, delay: float | None) -> None:
        """*loop*: call ``self.timers.fire()`` after ``delay`` seconds (None: no alarm)."""
        raise NotImplementedError

    async def wait(self, core: StreamCore, *, closed: bool = False) -> None:
        """Wait on this loop until ``core`` is final (``closed``: its upstream is closed)."""
        raise NotImplementedError


def current_home() -> Home:
    """The home of the code running now; raises RuntimeError outside a supported loop."""
    import sniffio

    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        raise RuntimeError("no running event loop") from None
    if library == "trio":
        return _trio_home()
    if library == "asyncio":
        return asyncio_home(asyncio.get_running_loop())
    raise RuntimeError(
        f"StreamGuard guards async streams on asyncio (uvloop included) and trio, not {library}."
    )


def home_here() -> Home | None:
    """``current_home()``, or None outside any event loop."""
    if asyncio._get_running_loop() is None and not _in_trio():
        return None
    try:
        return current_home()
    except RuntimeError:
        return None


def _in_trio() -> bool:
    import sys

    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------------------------- asyncio

_asyncio_homes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncioHome] = (
    weakref.WeakKeyDictionary()
)
_homes_lock = threading.Lock()


def asyncio_home(loop: asyncio.AbstractEventLoop) -> AsyncioHome:
    """The home of an asyncio loop (created on first use, then shared)."""
    home = _asyncio_homes.get(loop)
    if home is None:
        with _homes_lock:
            home = _asyncio_homes.get(loop)
            if home is None:
                home = _asyncio_homes[loop] = AsyncioHome(loop)
    return home


# Tasks that close upstreams are kept here until done: the loop itself holds tasks weakly.
_closing_tasks: set[asyncio.Task[Any]] = set()


class AsyncioHome(Home):
    name = "asyncio"
    current_task = staticmethod(asyncio.current_task)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from streamguard._engine.looptimers import LoopTimers

        # Weak: the home is the value of a WeakKeyDictionary keyed by this loop.
        self._loop_ref = weakref.ref(loop)
        self.timers = LoopTimers(self)
        self._alarm: asyncio.TimerHandle | None = None
        self._getter_ref: weakref.ref[Callable[[], Any]] | None = None  # see task_getter

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop_ref()

    def task_getter(self) -> Callable[[], Any]:
        # Python 3.11's asyncio.current_task is a Python function that finds the running loop
        # and looks it up in the tasks' dict: three calls per chunk, where one lookup bound to
        # this loop is one. From 3.12 it is C: one call already. The lookup holds the loop, so
        # the home keeps it weakly: one is shared by the loop's open streams (264 bytes each
        # otherwise), and it goes, and the loop can go, with the last of them.
        getter = self._getter_ref() if self._getter_ref is not None else None
        if getter is not None:
            return getter
        get = getattr(asyncio.current_task, "__globals__", {}).get("_current_tasks")
        loop = self._loop_ref()
        if isinstance(get, dict) and loop is not None:
            getter = functools.partial(get.get, loop)
            self._getter_ref = weakref.ref(getter)
            return getter
        return asyncio.current_task

    def here(self) -> bool:
        loop = self._loop_ref()
        return loop is not None and asyncio._get_running_loop() is loop

    def closed(self) -> bool:
        loop = self._loop_ref()
        return loop is None or loop.is_closed()

    def running(self) -> bool:
        loop = self._loop_ref()
        return loop is not None and loop.is_running() and not loop.is_closed()

    def run_soon(self, fn: Callable[[], object]) -> bool:
        loop = self._loop_ref()
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    def spawn(self, async_fn: Callable[[], Awaitable[object]]) -> None:
        loop = self._loop_ref()
        assert loop is not None
        task = loop.create_task(_run(async_fn))
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)

    def follow(self, task: Any, core: StreamCore) -> Any:
        watcher = _TaskWatcher(core)
        task.add_done_callback(watcher)
        return watcher

    def unfollow(self, task: Any, token: Any) -> None:
        task.remove_done_callback(token)

    def set_alarm(self, delay: float | None) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        loop = self._loop_ref()
        if delay is not None and loop is not None and not loop.is_closed():
            self._alarm = loop.call_later(delay, self.timers.fire)

    async def wait(self, core: StreamCore, *, closed: bool = False) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def notify() -> None:
            # On the loop itself (the stream's close task) resolve at once: a hop through
            # call_soon_threadsafe would cost the awaiting close() a wake-up and a loop turn.
            if asyncio._get_running_loop() is loop:
                _resolve(fut)
            else:
                self.run_soon(lambda: _resolve(fut))

        if core.add_final_waiter(notify, closed=closed):
            await fut


async def _run(async_fn: Callable[[], Awaitable[object]]) -> None:
    await async_fn()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _TaskWatcher:
    """The done callback of the asyncio task iterating a stream (an object, to be removed)."""

    __slots__ = ("core",)

    def __init__(self, core: StreamCore) -> None:
        self.core = core

    def __call__(self, task: asyncio.Task[Any]) -> None:
        # The end of the task that iterates the stream is a stop signal when it ends by
        # cancellation or an exception: that is how a loop left by an exception shows itself
        # (the traceback keeps the stream alive, so nothing else would). A task that returns
        # normally may have handed the stream on, so it is left to the other signals. The task
        # is forgotten either way: its result may be the stream.
        core = self.core
        followed = core._followed
        if followed is not None and followed[0] is task:
            core._followed = None
        if core.stop_reason is not None:
            return
        if task.cancelled():
            core.request_stop(
                StopReason.CONSUMER_CANCELLED, "the task iterating the stream was cancelled"
            )
        elif (exc := task.exception()) is not None:
            core.request_stop(
                StopReason.CONSUMER_CLOSED,
                f"the task iterating the stream raised {type(exc).__name__}",
            )


# ------------------------------------------------------------------------------------- trio

_trio_homes: dict[Any, TrioHome] = {}  # TrioToken -> home, removed when the run ends


def _trio_home() -> TrioHome:
    import trio

    token = trio.lowlevel.current_trio_token()
    home = _trio_homes.get(token)
    if home is None:
        home = _trio_homes[token] = TrioHome(token)
        trio.lowlevel.add_instrument(cast(Any, _RunWatcher(home)))  # duck-typed Instrument
    return home


class TrioHome(Home):
    name = "trio"

    def __init__(self, token: Any) -> None:
        import trio

        from streamguard._engine.looptimers import LoopTimers

        self.token = token
        self.current_task = trio.lowlevel.current_task
        self.timers = LoopTimers(self)
        self.followed: dict[Any, list[StreamCore]] = {}  # task -> streams it iterates
        self.ended = False
        self._alarm_at: float | None = None  # in trio.current_time()
        self._alarm_scope: Any = None
        self._alarm_task = False

    def here(self) -> bool:
        import trio

        try:
            return bool(trio.lowlevel.current_trio_token() is self.token)
        except RuntimeError:
            return False

    def closed(self) -> bool:
        return self.ended

    def running(self) -> bool:
        return not self.ended  # a trio run runs until it ends

    def run_soon(self, fn: Callable[[], object]) -> bool:
        import trio

        if self.ended:
            return False
        try:
            self.token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def spawn(self, async_fn: Callable[[], Awaitable[object]]) -> None:
        import trio

        trio.lowlevel.spawn_system_task(async_fn, name="streamguard-close")

    def follow(self, task: Any, core: StreamCore) -> Any:
        self.followed.setdefault(task, []).append(core)
        return core

    def unfollow(self, task: Any, token: Any) -> None:
        cores = self.followed.get(task)
        if cores is not None:
            if token in cores:
                cores.remove(token)
            if not cores:
                del self.followed[task]

    def task_exited(self, task: Any) -> None:
        cores = self.followed.pop(task, None)
        if not cores:
            return
        for core in cores:
            followed = core._followed
            if followed is not None and followed[0] is task:
                core._followed = None
        # trio keeps a task's outcome private; its nursery is cancelled when the task was
        # cancelled from outside and when it raised (trio then cancels the siblings). A task
        # that returned normally may have handed the stream on: left to the other signals.
        nursery = task.parent_nursery
        if nursery is None or not nursery.cancel_scope.cancel_called:
            return
        for core in cores:
            if core.stop_reason is None:
                core.request_stop(
                    StopReason.CONSUMER_CANCELLED,
                    "the task iterating the stream ended in a cancelled nursery",
                )

    def set_alarm(self, delay: float | None) -> None:
        import trio

        if delay is None:
            self._alarm_at = None
            if self._alarm_scope is not None:
                self._alarm_scope.cancel()
            return
        at = trio.current_time() + delay
        self._alarm_at = at
        if self._alarm_scope is not None:
            self._alarm_scope.deadline = at
        elif not self._alarm_task:
            self._alarm_task = True
            trio.lowlevel.spawn_system_task(self._alarms, name="streamguard-timers")

    async def _alarms(self) -> None:
        import trio

        try:
            while self._alarm_at is not None:
                with trio.CancelScope(deadline=self._alarm_at) as scope:
                    self._alarm_scope = scope
                    await trio.sleep_forever()
                self._alarm_scope = None
                if self._alarm_at is not None and trio.current_time() >= self._alarm_at:
                    self._alarm_at = None
                    self.timers.fire()  # sets the next alarm, if any
        finally:
            self._alarm_scope = None
            self._alarm_task = False

    async def wait(self, core: StreamCore, *, closed: bool = False) -> None:
        import trio

        event = trio.Event()
        if core.add_final_waiter(lambda: self.run_soon(event.set), closed=closed):
            await event.wait()


class _RunWatcher:
    """A trio Instrument for one run: the end of tasks that iterate streams, and of the run."""

    def __init__(self, home: TrioHome) -> None:
        self.home = home

    def task_exited(self, task: Any) -> None:
        if self.home.followed:
            self.home.task_exited(task)

    def after_run(self) -> None:
        home = self.home
        home.ended = True
        _trio_homes.pop(home.token, None)
        # A stream kept past the end of its run: trio has finalised the run's async
        # generators, the SDK's response among them, and nothing can read it any more. It is
        # stopped now (sealed from here: the run is gone), not left to the watchdog's stall.
        for entry in list(home.timers.entries()):
            core = entry.core
            if core is not None and core.stop_reason is None:
                core.request_stop(
                    StopReason.CONSUMER_CLOSED, "the trio run iterating the stream ended"
                )
