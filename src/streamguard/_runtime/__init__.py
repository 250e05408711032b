"""The process-wide runtime: options, signer and ledger, sinks, telemetry, registry, timers.

``instrument()`` installs one; anything that needs one before that (``StreamSession``,
``guard()``) gets a default built from the environment.

Floor: ``_runtime``, the composition root: it wires the engine, receipts, money and telemetry
together (it may import all of them) and plugs itself into the engine as its host
(``_engine.ports.install``). ``providers``, ``integrations`` and the public face stand on it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from streamguard._config import Options
from streamguard._engine import owners, ports
from streamguard._engine.aio import home_here
from streamguard._engine.core import StreamCore
from streamguard._engine.reasons import StopReason
from streamguard._engine.watchdog import Timers, Watchdog
from streamguard._money import budget as budget_module
from streamguard._money.accounting import BILLING, receipt_fields
from streamguard._money.budget import Budget
from streamguard._money.context import current_limits, current_scope
from streamguard._money.degrade import degrade
from streamguard._money.estimate import LengthModel
from streamguard._money.pricing import Pricing
from streamguard._money.spend import estimate_input_tokens, open_spend
from streamguard._receipts.chain import Ledger
from streamguard._receipts.model import Receipt
from streamguard._receipts.signing import Signer
from streamguard._receipts.writer import ReceiptWriter
from streamguard._runtime.parts import (
    _cap_check,
    _default_store,
    _emitter,
    _env_budget,
    _open_ledger,
    _signer_of,
    faults,
    report_fault,
)
from streamguard._telemetry.otel import Telemetry
from streamguard.exceptions import BudgetExceeded

__all__ = ["Runtime", "faults", "flush_all", "get_runtime", "report_fault", "set_runtime"]

log = logging.getLogger("streamguard")
VERSION = "0.1.0"


class Runtime:
    """Everything shared by the streams of one configuration."""

    def __init__(
        self,
        options: Options | None = None,
        *,
        signer: Signer | None = None,
        sinks: Iterable[Any] = (),
        pricing: Pricing | None = None,
        budgets: Iterable[Budget] = (),
        policies: Iterable[Any] = (),
        budget_store: Any = None,
        billing: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options or Options.resolve()
        opts = self.options
        self.signer = signer or _signer_of(opts)
        self.ledger = Ledger(self.signer, ledger_id=opts.ledger_id)
        self.sinks: list[Any] = list(sinks)
        if opts.ledger_path:
            self.sinks.append(_open_ledger(opts.ledger_path))
        self.telemetry = Telemetry(VERSION)
        self.watchdog = Watchdog()
        self.lengths = LengthModel(opts.expected_output_tokens)
        self.pricing = pricing or Pricing()
        self.timers = Timers.of(opts.stall_timeout, opts.deadline, opts.idle_timeout)
        self.budgets = tuple(budgets) + _env_budget(opts)
        self.policies = tuple(policies)
        self.budget_store = budget_store or _default_store(opts)
        self.billing = {**BILLING, **(billing or {})}
        self._warned: set[str] = set()
        self.remote: Any = None
        if opts.redis_url:
            from streamguard._remote import RemoteCancel

            self.remote = RemoteCancel(opts.redis_url, self)
        self._streams: dict[str, StreamCore] = {}
        self._lock = threading.Lock()
        self.closed = False
        self.writer: ReceiptWriter[StreamCore] = ReceiptWriter(
            self._seal_and_emit, report=report_fault, after_batch=self._sync_sinks
        )
        _runtimes.add(self)

    # --------------------------------------------------------------------- registry
    def stream_opened(self, core: StreamCore) -> None:
        with self._lock:
            self._streams[core.stream_id] = core
        remote = self.remote
        if remote is not None and not remote.listening:
            # A forked child's listener starts at the fork; a stream opened before it is
            # subscribed could miss a cancel sent by id (bounded: Redis down means no wait).
            remote.wait_listening(1.0)
        try:
            self.telemetry.stream_started(core)
        except Exception as exc:
            report_fault("telemetry.stream_started", exc)

    def begin(self, core: StreamCore, request: Mapping[str, Any] | None = None) -> None:
        """Apply scope, budgets, policies and caps to a new stream, before its request is sent.

        Raises ``BudgetExceeded`` (the receipt says ``rejected``) when a budget has nothing left.
        A fault of StreamGuard's own here is reported and the stream goes on unlimited (G7).
        """
        try:
            self._begin(core, request)
        except BudgetExceeded:
            raise
        except Exception as exc:
            report_fault("begin", exc)

    def _begin(self, core: StreamCore, request: Mapping[str, Any] | None) -> None:
        owners.adopt(core)  # the request's, a framework run's (integrations register them)
        limits = current_limits()
        scope = current_scope()
        if scope:
            core.set_attributes(scope)
        checks: list[Any] = []
        budgets = self.budgets + limits.budgets
        if budgets:
            spend = open_spend(
                core,
                budgets,
                self.budget_store,
                scope,
                estimate_input_tokens(request or {}),
                price=self.pricing.price(core.provider, core.model),
                expected_output=self.lengths.expected(core.model),
                warn_once=self.warn_once,
            )
            if spend is not None:
                core.spend = spend
                checks.append(spend)
        cap = limits.max_output_tokens or self.options.max_output_tokens
        if cap is not None:
            checks.append(_cap_check(cap))
        policies = self.policies + limits.policies
        if policies:
            from streamguard._engine.policy import sync_checker

            runs = [policy.start() for policy in policies]
            core.policy_runs = runs
            sync_runs = [run for run in runs if not run.policy.is_async]
            if sync_runs:
                checks.append(sync_checker(sync_runs))
            # Async checks are awaited by an async driver; a sync stream runs them on the
            # background loop instead (see StreamCore.bind_upstream).
            core.async_checks = [run for run in runs if run.policy.is_async] or None
        core.checks = checks or None
        core.deadline = limits.deadline

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def active(self) -> list[StreamCore]:
        with self._lock:
            return list(self._streams.values())

    def find(self, stream_id: str) -> StreamCore | None:
        with self._lock:
            return self._streams.get(stream_id)

    # ----------------------------------------------------------------------- timers
    def watch(self, core: StreamCore, timers: Timers | None = None) -> None:
        """Start the stall/deadline/idle timers of a stream (none if all are off)."""
        if timers is None and core.deadline is not None:
            opts = self.options
            timers = Timers.of(opts.stall_timeout, core.deadline, opts.idle_timeout)
        core.watch = timers if timers is not None else self.timers
        if core.watch is None:
            return
        core.idle_clock = core.watch.idle_ns is not None
        home = core._home
        if home is not None:
            home.timers.arm(core)  # on the stream's own loop, which runs this call
            self.watchdog.watch_home(home)  # for when that loop stops running (watchdog)
        else:
            self.watchdog.watch(core)

    def unwatch(self, core: StreamCore) -> None:
        # Timers are lazy: a stopped core is dropped the next time its timer fires.
        core.watch = None

    # --------------------------------------------------------------------- finalize
    def finalize(self, core: StreamCore) -> None:
        """End ``core`` once its upstream is closed: budgets get the actual cost here, on the
        stopping thread; the receipt is sealed and emitted by the receipt writer's thread.

        The application's ``close()`` (or exception, or loop exit) therefore never waits for
        the signature, the ledger's fsync or the OTel SDK. ``handle.receipt`` and
        ``wait_final`` wait for the seal. When the writer's queue is full (a wedged disk) or the
        writer is closed (after ``shutdown()``), the receipt is sealed here instead: never lost.
        """
        self._settle(core)
        if self.closed or not self.writer.submit(core):
            self._seal_and_emit(core, batched=False)

    def _seal_and_emit(self, core: StreamCore, batched: bool = True) -> None:
        """Seal, sign and emit the one receipt of ``core``, then mark it final.

        ``batched``: on the writer's thread, the ledger's line is written now and fsynced once
        for the batch (``_sync_sinks``); otherwise it is fsynced before this returns.
        """
        receipt: Receipt | None = None
        canonical = b""
        # Sinks that keep chain order (the JSON-lines ledger) are written inside the chain's
        # critical section, so a file's line order is its chain order under any thread count;
        # the others after the seal. (``sinks`` may change while the runtime lives.)
        in_order: list[Any] = []
        after: list[Any] = []
        for sink in self.sinks:
            (in_order if getattr(sink, "in_chain_order", False) else after).append(sink)
        try:
            receipt, canonical = self._seal(core, in_order, batched)
        except Exception as exc:
            # A value the receipt cannot hold (an empty model name, a float attribute...):
            # sealed again without it, the detail says what was left out (G4: never none).
            if not degrade(core, exc):
                report_fault("receipt.seal", exc)
            else:
                try:
                    receipt, canonical = self._seal(core, in_order, batched)
                except Exception as exc2:
                    report_fault("receipt.seal", exc2)
        if receipt is not None and after:
            _emitter(after, False)(receipt, canonical)
        try:
            self.telemetry.stream_finished(core, receipt, canonical)
        except Exception as exc:
            report_fault("telemetry.stream_finished", exc)
        with self._lock:
            self._streams.pop(core.stream_id, None)
        core.mark_final(receipt)

    def _seal(self, core: StreamCore, in_order: list[Any], batched: bool) -> tuple[Receipt, bytes]:
        return self.ledger.seal_bytes(
            receipt_fields(
                core,
                pricing=self.pricing,
                lengths=self.lengths,
                billing=self.billing,
                span_ids=self.telemetry.span_ids(core),
            ),
            _emitter(in_order, batched) if in_order else None,
        )

    def _sync_sinks(self) -> None:
        """After a batch of the writer: fsync the ledger lines it appended (one fsync)."""
        for sink in self.sinks:
            sync = getattr(sink, "sync", None)
            if sync is not None:
                try:
                    sync()
                except Exception as exc:
                    report_fault(f"sink.{type(sink).__name__}", exc)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until every receipt of a stream that already ended is sealed, emitted and on
        disk; False if ``timeout`` passed first."""
        return self.writer.flush(timeout)

    def discard(self, core: StreamCore, why: str) -> None:
        """Forget a core whose request produced no stream StreamGuard can guard: no receipt (it
        would claim what StreamGuard did not see), one warning per kind, budgets settled at 0."""
        self.warn_once(
            f"discard:{why}",
            f"StreamGuard could not guard a {core.provider} stream: {why}. It is NOT guarded and "
            "gets no receipt.",
        )
        try:
            with self._lock:
                self._streams.pop(core.stream_id, None)
            core.stop_reason = StopReason.COMPLETED  # nothing may stop or seal it any more
            self.unwatch(core)
            if core.spend is not None:
                core.spend.settle(None, 0)
            self.telemetry.stream_discarded(core, why)
        except Exception as exc:
            report_fault("discard", exc)

    def _settle(self, core: StreamCore) -> None:
        """Budgets get the actual cost; end-only policies get their turn on a completed stream."""
        try:
            if core.policy_runs and core.stop_reason is StopReason.COMPLETED:
                from streamguard._engine.policy import finish

                finish(core, core.policy_runs)
            if core.spend is not None:
                output = core.usage_exact if core.usage_exact is not None else core.produced_tokens
                core.spend.settle(core.input_tokens, output)
        except Exception as exc:
            report_fault("finalize.settle", exc)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every open stream (reason ``shutdown``), wait for their receipts, end timers."""
        self.closed = True
        cores = self.active()
        for core in cores:
            core.request_stop(StopReason.SHUTDOWN, "StreamGuard was shut down")
        here = home_here()
        deadline = time.monotonic() + timeout
        for core in cores:
            # A stream of the loop this very call blocks cannot be closed by that loop until
            # shutdown returns: its socket was already shut down by request_stop, so seal now.
            if core._home is not None and core._home is here:
                core._closed()
            elif core.wait_final(max(0.0, deadline - time.monotonic())) is None:
                # An async stream whose loop is not running: seal it from here.
                core._closed()
        self.watchdog.stop()
        if self.remote is not None:
            self.remote.close()
        if not self.writer.close(max(0.1, deadline - time.monotonic())):
            report_fault("shutdown", TimeoutError("the receipt writer did not finish in time"))
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    report_fault(f"sink.{type(sink).__name__}.close", exc)


_current: Runtime | None = None
_current_lock = threading.Lock()
_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


def get_runtime() -> Runtime:
    """The installed runtime, or a default one built from the environment."""
    global _current
    runtime = _current
    if runtime is not None:
        return runtime
    with _current_lock:
        if _current is None:
            _current = Runtime()
        return _current


def set_runtime(runtime: Runtime | None) -> Runtime | None:
    """Install ``runtime`` (None: the next use builds a default); returns the previous one."""
    global _current
    with _current_lock:
        previous, _current = _current, runtime
    return previous


@atexit.register
def _at_exit() -> None:
    runtime = _current
    if runtime is not None and not runtime.closed and os.getpid() == _PID:
        runtime.shutdown(timeout=2.0)
    flush_all(2.0)


def flush_all(timeout: float = 5.0) -> bool:
    """Wait until the receipt of every stream that has ended is sealed, emitted (span event,
    log record, metrics, sinks) and fsynced in the ledger; False if ``timeout`` passed first.

    Receipts are sealed off the application's thread; this is the barrier for code that reads
    them elsewhere (a ledger file, an exporter) or is about to ``os._exit``. Interpreter exit,
    ``uninstrument()`` and ``os.fork()`` flush on their own. Example::

        stream.close()
        streamguard.flush()
        subprocess.run(["streamguard", "verify", "receipts.jsonl"], check=True)
    """
    deadline = time.monotonic() + timeout
    ok = True
    for runtime in list(_runtimes):
        ok = runtime.writer.flush(max(0.0, deadline - time.monotonic())) and ok
    return ok


def _flush_before_threads_join() -> None:
    # Runs when the main thread ends, before non-daemon threads are joined and before atexit
    # handlers, so queued receipts reach the OTel providers before their own atexit shutdown.
    flush_all(2.0)


_register_thread_atexit = getattr(threading, "_register_atexit", None)
if _register_thread_atexit is not None:
    _register_thread_atexit(_flush_before_threads_join)


_PID = os.getpid()


# The engine asks its host through ports, and budgets report store failures through a hook:
# neither imports the runtime. Plug them in.
ports.install(get_runtime, report_fault)


def _store_error(budget: str, failed_open: bool) -> None:
    get_runtime().telemetry.store_error(budget, failed_open)


budget_module.on_store_error = _store_error
