"""What a forked child does to the runtime it inherited (see docs/forking.md).

This module registers ``os.register_at_fork`` hooks (imported with ``streamguard``). Before the
fork, the parent lets the price-table warm-up finish (a child must not inherit an import lock
held by a thread it does not have) and drains its receipt writer (bounded: 2 s), so the
child's memory holds no receipt still waiting to be sealed. In the child, before the child runs
any other code, the hook calls ``make_runtime_the_childs`` for every live runtime. Afterwards
the child has:

- a chain of its own: a new ``Ledger`` (new ledger id, seq from 0; a configured ledger id gets
  a random suffix), so no two processes write the same ``(ledger_id, seq)``;
- a receipt writer of its own, with an empty queue and no thread yet (the parent's writer
  thread does not exist in the child; whatever the parent had still queued is the parent's);
- a fresh registry and watchdog, fresh locks (a lock another thread held at the fork would
  stay held in the child), its own ledger file handle, Redis connections and cancel listener;
- no claim on the parent's streams: each core that was open at the fork is disowned, so the
  child never closes its socket (shared with the parent: closing it would cut the parent's
  stream) nor seals a receipt for it. The parent does, once.

Floor: above ``_runtime``, whose internals it resets (split off to keep the runtime small);
nothing below imports it.
"""

from __future__ import annotations

import os
import threading
import uuid

from streamguard import _runtime
from streamguard._engine import loopthread
from streamguard._engine.core import FINAL, StreamCore
from streamguard._engine.reasons import StopReason
from streamguard._engine.watchdog import Watchdog
from streamguard._receipts.chain import Ledger
from streamguard._runtime import Runtime, report_fault

__all__ = ["forget_background_loop", "make_runtime_the_childs"]


def forget_background_loop() -> None:
    """The parent's background loop thread does not exist in the child; start anew on use."""
    loopthread.forget_after_fork()


def make_runtime_the_childs(runtime: Runtime) -> None:
    """Give ``runtime`` the child's own chain, registry, timers, connections and locks."""

    inherited = list(runtime._streams.values())
    runtime._streams = {}
    runtime._lock = threading.Lock()
    for core in inherited:
        disown(core)
    runtime.ledger = Ledger(runtime.signer, ledger_id=child_ledger_id(runtime.options.ledger_id))
    runtime.watchdog = Watchdog()
    runtime.writer = runtime.writer.forked()
    lock_type = type(runtime._lock)
    for part in (runtime.pricing, runtime.telemetry, runtime.lengths, runtime.budget_store):
        if isinstance(getattr(part, "_lock", None), lock_type):
            part._lock = threading.Lock()
    for part in (*runtime.sinks, runtime.budget_store):
        hook = getattr(part, "_after_fork_in_child", None)
        if hook is not None:
            try:
                hook()
            except Exception as exc:
                report_fault(f"fork.{type(part).__name__}", exc)
    if runtime.remote is not None:
        try:
            runtime.remote = runtime.remote.restarted()
        except Exception as exc:
            runtime.remote = None
            report_fault("fork.remote_cancel", exc)


def disown(core: StreamCore) -> None:
    """A stream of the parent, seen in the child: inert here, never closed or sealed.

    Its stop reason is set (so ``request_stop`` is a no-op returning False), its closers are
    dropped and it counts as final (so nothing waits for a receipt the child will not seal).
    """
    core._lock = threading.Lock()
    core._close = core._aclose = core._abort = None
    core.watch = None
    if core.stop_reason is None:
        core.stop_reason = StopReason.SHUTDOWN
        core.detail = "inherited by a forked child process; the parent seals its receipt"
    core.phase = FINAL
    core._receipt_waiters = core._closed_waiters = None
    done = threading.Event()
    done.set()
    core._final_event = done


def child_ledger_id(configured: str | None) -> str | None:
    """None (a fresh random id) unless configured: then the parent's id with a random suffix."""
    return None if configured is None else f"{configured}-{uuid.uuid4().hex[:12]}"


def _after_fork_in_child() -> None:
    """``os.fork()`` hook (gunicorn, uWSGI, Celery prefork, multiprocessing "fork").

    Runs in the child before it returns from ``fork()``; see docs/forking.md.
    """
    _runtime._current_lock = threading.Lock()
    _runtime._PID = os.getpid()  # the child's own atexit shutdown seals its open streams
    forget_background_loop()
    for runtime in list(_runtime._runtimes):
        if runtime.closed:
            continue
        try:
            make_runtime_the_childs(runtime)
        except Exception as exc:
            report_fault("fork", exc)


def _before_fork() -> None:
    """``os.fork()`` hook in the parent: no StreamGuard thread may hold an import lock across
    the fork (the price table's warm-up imports it), and the receipts of streams that already
    ended are sealed and written before it (the child must not inherit them half-way)."""
    for runtime in list(_runtime._runtimes):
        try:
            runtime.pricing.settle()
            if not runtime.closed:
                runtime.writer.flush(2.0)
        except Exception as exc:
            report_fault("fork.before", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
