"""The receipt writer: one thread that seals and emits receipts off the application's thread.

A stream's ``close()`` (its ``with`` exit, its ``__del__``, its task's end) only cuts the
counters, closes the upstream and hands the stream to this writer; sealing, signing, the
ledger line and its fsync, the span event, the log record and the metrics happen here.

Guarantees of ``ReceiptWriter``
    - One thread, first in first out: jobs run one at a time in ``submit`` order, so whatever a
      job writes in chain order (the JSON-lines ledger) lands in chain order.
    - Bounded: at most ``capacity`` jobs wait. ``submit`` returns False, queuing nothing, when
      the queue is full, the writer is closed or its thread cannot start: the caller then runs
      the job itself, so a receipt is never dropped and the queue never grows without bound.
    - Never dies of a job: a job that raises is reported (``report``, once per place) and the
      next one runs.
    - ``after_batch()`` runs after each run of jobs the thread found queued back to back (the
      ledger's fsync: one per batch, not one per receipt), before any ``flush`` waiting on that
      batch returns.
    - A ``submit`` wakes the thread only when it was asleep: after a batch the thread looks at
      its queue again after ``coalesce`` seconds (2 ms), backing off to 16 ms, for ``linger``
      seconds (62 ms) before it blocks again, so a close during a burst costs a queue append
      and no thread wake-up; a receipt waits at most 16 ms (and the GIL) to be sealed.
    - ``flush(timeout)`` returns True once every job submitted before the call has run and its
      batch's ``after_batch`` returned; False at the timeout. Called on the writer's own thread
      it returns at once (a job cannot wait for itself).
    - ``close(timeout)`` flushes and ends the thread; later ``submit`` calls return False.
    - Safe in finalisers: ``submit`` takes only a re-entrant lock and a ``SimpleQueue`` put, so a
      garbage collection that drops a stream in the middle of a ``submit`` on the same thread
      submits again instead of deadlocking.
    - After ``os.fork()`` the child calls ``forked()``: a new writer with no thread and an empty
      queue. The parent's queued jobs are the parent's (its thread runs them); the child never
      inherits a thread it does not have or a lock held by one.

The thread is a daemon started on the first ``submit`` (importing StreamGuard starts none) and
ends after ``idle`` seconds with nothing to do (a later ``submit`` starts another), so a runtime
that is dropped without ``shutdown()`` leaves no thread behind for long. The runtime flushes it
at interpreter exit, before the OTel providers shut down (see ``_runtime``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["DEFAULT_CAPACITY", "ReceiptWriter"]

T = TypeVar("T")

DEFAULT_CAPACITY = 1024
"""Jobs that may wait for the writer: what a ``kill -9`` can lose at most (docs/receipts.md)."""

DEFAULT_COALESCE = 0.002
"""Seconds between the writer's looks at its queue while a burst of closes lasts."""
DEFAULT_LINGER = 0.062
"""Seconds the writer keeps looking after its last job before it blocks again (then the next
``submit`` wakes it)."""

_STOP = object()


class _Marker:
    """A flush point in the queue: set once every job before it has run."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class ReceiptWriter(Generic[T]):
    """Runs ``run(job)`` for each submitted job on a thread of its own, in submit order.

    >>> seen = []
    >>> writer = ReceiptWriter(seen.append, report=lambda where, exc: None)
    >>> writer.submit("a"), writer.flush(5.0), seen
    (True, True, ['a'])
    >>> writer.close(5.0)
    True
    """

    def __init__(
        self,
        run: Callable[[T], object],
        *,
        report: Callable[[str, BaseException], None],
        after_batch: Callable[[], object] | None = None,
        capacity: int = DEFAULT_CAPACITY,
        idle: float = 10.0,
        coalesce: float = DEFAULT_COALESCE,
        linger: float = DEFAULT_LINGER,
        name: str = "streamguard-receipts",
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if coalesce <= 0 or linger < 0:
            raise ValueError("coalesce must be positive and linger not negative")
        self._run = run
        self._report = report
        self._after_batch = after_batch
        self._capacity = capacity
        self._idle = idle
        self._coalesce = coalesce
        self._linger_s = linger
        self._delays = _backoff(coalesce, linger)
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def pending(self) -> int:
        """Jobs queued and not yet taken by the thread (approximate while it runs)."""
        return self._queue.qsize()

    def on_writer_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, job: T) -> bool:
        """Queue ``job``; False (nothing queued) if the caller must run it itself."""
        with self._lock:
            if self._closed or self._queue.qsize() >= self._capacity:
                return False
            thread = self._thread
            if (thread is None or not thread.is_alive()) and not self._start():
                return False
            self._queue.put(job)
            return True

    def _start(self) -> bool:
        if self._thread is not None:
            # It died (it cannot, short of the interpreter ending): run what it left first.
            self._drain_here()
        thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down: no new threads
            return False
        self._thread = thread
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted before this call ran; False at ``timeout``."""
        with self._lock:
            thread = self._thread
            if thread is None or threading.current_thread() is thread:
                return True
            if not thread.is_alive():
                self._drain_here()
                return True
            marker = _Marker()
            self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued, then end the thread. True if it ended within ``timeout``."""
        with self._lock:
            if self._closed:
                thread = self._thread
            else:
                self._closed = True
                thread = self._thread
                if thread is not None and thread.is_alive():
                    self._queue.put(_STOP)
        if thread is None or threading.current_thread() is thread:
            return True
        thread.join(timeout)
        if thread.is_alive():
            return False
        with self._lock:
            self._drain_here()  # a job queued by a submit racing the close (none, normally)
        return True

    def forked(self) -> ReceiptWriter[T]:
        """The writer of a forked child: the same job runner, no thread, an empty queue."""
        return ReceiptWriter(
            self._run,
            report=self._report,
            after_batch=self._after_batch,
            capacity=self._capacity,
            idle=self._idle,
            coalesce=self._coalesce,
            linger=self._linger_s,
            name=self._name,
        )

    # ------------------------------------------------------------------------- thread
    def _loop(self) -> None:
        get = self._queue.get
        while True:
            try:
                item = get(timeout=self._idle)  # asleep: the next submit's put wakes it
            except queue.Empty:
                with self._lock:  # a submit holds it while it looks at the thread and puts
                    if self._queue.qsize() == 0:
                        self._thread = None
                        return
                continue
            while item is not None:
                stop = self._batch(item)
                item = None  # hold no job while lingering: its stream must be collectable
                if stop:
                    return
                item = self._linger()

    def _batch(self, item: Any) -> bool:
        """Run ``item`` and every job queued behind it, then ``after_batch``, then release the
        flushes that waited on them. True when the batch held the stop sentinel."""
        get_nowait = self._queue.get_nowait
        markers: list[_Marker] = []
        stop = False
        while True:
            if item is _STOP:
                stop = True
            elif isinstance(item, _Marker):
                markers.append(item)
            else:
                self._run_one(item)
            # Hold no job while idle: a finished stream must be collectable at once.
            item = None
            try:
                item = get_nowait()
            except queue.Empty:
                break
        self._batch_done()
        for marker in markers:
            marker.done.set()
        return stop

    def _linger(self) -> Any:
        """After a batch, look at the queue again after ``coalesce`` seconds, then after twice
        that, and so on (at most 8x apart), for ``linger`` seconds in all, instead of blocking
        on it: a ``put`` into a queue nobody blocks on wakes no thread, so a burst of closes
        pays no wake-up each and is sealed in batches (one fsync per batch), while a quiet
        writer soon stops taking the GIL from the application. Returns the next item, or None
        to block again (the burst is over). It naps on a lock of its own, never through
        ``time.sleep``: an application or test that patches or counts ``time.sleep`` (the
        openai SDK's own suite does) must see no call StreamGuard made."""
        get_nowait, nap = self._queue.get_nowait, threading.Lock()
        nap.acquire()  # held: each acquire below waits its full delay
        for delay in self._delays:
            nap.acquire(timeout=delay)
            try:
                return get_nowait()
            except queue.Empty:
                continue
        return None

    def _run_one(self, job: T) -> None:
        try:
            self._run(job)
        except BaseException as exc:  # the writer outlives any job (G7)
            self._report("receipt.writer", exc)

    def _batch_done(self) -> None:
        if self._after_batch is not None:
            try:
                self._after_batch()
            except BaseException as exc:
                self._report("receipt.writer.after_batch", exc)

    def _drain_here(self) -> None:
        """Run, on the calling thread, whatever is still queued (the thread is gone)."""
        ran = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Marker):
                item.done.set()
            elif item is not _STOP:
                self._run_one(item)
                ran = True
        if ran:
            self._batch_done()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._thread is not None else "idle"
        return f"<ReceiptWriter {state}, {self.pending} queued of {self._capacity}>"


def _backoff(first: float, total: float) -> tuple[float, ...]:
    """``first``, doubling up to 8x ``first``, until the delays add up to ``total``."""
    delays: list[float] = []
    delay, spent = first, 0.0
    while spent + delay <= total + 1e-9:
        delays.append(delay)
        spent += delay
        delay = min(delay * 2, first * 8)
    return tuple(delays)
