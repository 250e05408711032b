"""The runtime's parts, built from ``Options`` (signer, ledger, sinks' emitter, output cap,
budget store, the environment's budget), and the log of StreamGuard's own faults.

Floor: ``_runtime`` (the composition root's own module; ``streamguard._runtime`` re-exports
``report_fault`` and ``faults``). It may import what ``_runtime`` may; nothing in it knows the
``Runtime`` class.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from streamguard._config import Options
from streamguard._engine.core import StreamCore
from streamguard._engine.reasons import StopReason
from streamguard._money.budget import Budget, InMemoryBudgetStore
from streamguard._receipts.ledger import JsonlLedgerSink
from streamguard._receipts.model import Receipt
from streamguard._receipts.signing import Signer, load_signer
from streamguard.exceptions import ConfigurationError

log = logging.getLogger("streamguard")

# Faults inside StreamGuard's own machinery: logged once per place, kept for tests to assert on.
faults: list[tuple[str, BaseException]] = []
_fault_places: set[str] = set()


def report_fault(where: str, exc: BaseException) -> None:
    """Record a fault of StreamGuard itself; the application's stream goes on (DESIGN G7)."""
    kept = _without_frames(exc)  # a log record may be kept too (pytest's capture keeps it)
    if len(faults) < 100:
        faults.append((where, kept))
    if where not in _fault_places:
        _fault_places.add(where)
        log.warning("StreamGuard internal fault in %s (the stream goes on): %r", where, kept)


def _without_frames(exc: BaseException) -> BaseException:
    """A copy of ``exc`` without its traceback: the traceback's frames hold what the faulting
    code held (a stream, its response), and a kept fault must not keep a dropped stream open
    (PROVIDERS.md pitfall 12)."""
    try:
        twin = copy.copy(exc)
    except Exception:  # an exception that cannot be copied: keep what it said
        return RuntimeError(f"{type(exc).__name__}: {exc!r}")
    twin.__traceback__ = twin.__context__ = twin.__cause__ = None
    return twin


def _signer_of(opts: Options) -> Signer:
    # A key option that holds its environment variable's value is left to load_signer to read
    # from there, so that an error names the variable the operator set, not the option.
    env = os.environ

    def given(value: str | None, variable: str) -> str | None:
        return None if value is not None and value == env.get(variable) else value

    return load_signer(
        signing_key=given(opts.signing_key, "STREAMGUARD_SIGNING_KEY"),
        signing_key_file=given(opts.signing_key_file, "STREAMGUARD_SIGNING_KEY_FILE"),
        key_id=given(opts.key_id, "STREAMGUARD_KEY_ID"),
    )


def _open_ledger(path: str) -> JsonlLedgerSink:
    try:
        return JsonlLedgerSink(path)
    except OSError as exc:
        raise ConfigurationError(
            f"STREAMGUARD_LEDGER_PATH (ledger_path) names {path!r}, which cannot be opened for "
            f"appending ({exc.strerror or type(exc).__name__}). Point it at a writable file; "
            "its directory is created if needed.",
            variable="STREAMGUARD_LEDGER_PATH",
        ) from None


def _emitter(sinks: list[Any], batched: bool) -> Any:
    def emit(receipt: Receipt, canonical: bytes) -> None:
        for sink in sinks:
            try:
                append = getattr(sink, "append", None) if batched else None
                if append is not None:
                    append(receipt)  # fsynced at the end of the writer's batch
                else:
                    sink.emit(receipt)
            except Exception as exc:
                report_fault(f"sink.{type(sink).__name__}", exc)

    return emit


def _cap_check(cap: int) -> Any:
    def check(core: StreamCore, chunk: object, tokens: int) -> None:
        if core.produced_tokens > cap:
            core.request_stop(
                StopReason.MAX_OUTPUT_TOKENS, f"the output reached the cap of {cap} tokens"
            )

    return check


def _default_store(opts: Options) -> Any:
    if opts.redis_url:
        from streamguard._money.redis_store import RedisBudgetStore

        return RedisBudgetStore(opts.redis_url)
    return InMemoryBudgetStore()


def _env_budget(opts: Options) -> tuple[Budget, ...]:
    if opts.budget_usd is None:
        return ()
    scope = tuple(s.strip() for s in (opts.budget_scope or "").split(",") if s.strip())
    return (Budget(opts.budget_usd, window=opts.budget_window, scope=scope, name="env"),)
