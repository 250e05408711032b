"""``instrument()`` / ``uninstrument()``: patch every installed provider SDK, once.

An SDK is patched when the application imports it (a wrapt post-import hook on its top-level
package), or at once if it already has: importing every installed SDK would cost an
application that uses one of them seconds and a hundred MB at start-up.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import wrapt

from streamguard._config import Options
from streamguard._engine.loopthread import stop_background_loop
from streamguard._money.pricing import Pricing
from streamguard._runtime import Runtime, set_runtime

__all__ = ["instrument", "is_instrumented", "uninstrument"]

log = logging.getLogger("streamguard")
_lock = threading.Lock()
_patched: list[Any] = []  # patchers installed (applied or waiting for their SDK), to undo
_instrumented = False
# SDK package -> the patcher the latest instrument() installed for it; a post-import hook is
# registered once per package (hooks cannot be unregistered) and applies the current one.
_on_import: dict[str, Any] = {}
_hooked: set[str] = set()


def instrument(
    *,
    sinks: Iterable[Any] = (),
    signer: Any = None,
    budgets: Iterable[Any] = (),
    policies: Iterable[Any] = (),
    prices: Mapping[str, Any] | None = None,
    price_function: Any = None,
    budget_store: Any = None,
    billing: Mapping[str, str] | None = None,
    **options: Any,
) -> None:
    """Guard every stream of the installed provider SDKs from now on.

    Options are those of ``streamguard.Options`` (each also read from its ``STREAMGUARD_*``
    environment variable; arguments win). Bad configuration raises ``ConfigurationError`` here,
    never later inside a stream. Besides those: ``sinks`` (extra receipt sinks), ``signer``,
    ``budgets`` (``Budget``), ``policies`` (``StreamPolicy``), ``prices`` (model -> ``Price``
    overrides), ``price_function(provider, model) -> Price | None``, ``budget_store`` and
    ``billing`` (provider, or "provider/operation", -> "stops_on_abort" | "whole_completion" |
    "runs_on_server", for the prevented estimate).
    A second call is a no-op with a warning. Example::

        import streamguard
        streamguard.instrument(stall_timeout=10, ledger_path="/var/lib/app/receipts.jsonl")
    """
    global _instrumented
    with _lock:
        if _instrumented:
            warnings.warn(
                "streamguard.instrument() was already called; this call changes nothing. "
                "Call uninstrument() first to change options.",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        runtime = Runtime(
            Options.resolve(options),
            signer=signer,
            sinks=sinks,
            budgets=budgets,
            policies=policies,
            pricing=Pricing(prices, price_function),
            budget_store=budget_store,
            billing=billing,
        )
        previous = set_runtime(runtime)
        runtime.pricing.warm_up()
        if previous is not None:
            previous.shutdown()
        from streamguard.integrations import framework_patchers
        from streamguard.providers import all_patchers

        for patcher in all_patchers():
            _patch_when_imported(patcher)
        for patcher in framework_patchers():
            try:
                if patcher.patch():
                    _patched.append(patcher)
            except Exception as exc:  # one framework's patch failing must not break the others
                log.warning("StreamGuard could not patch %s: %r", patcher.name, exc)
        _instrumented = True


def _patch_when_imported(patcher: Any) -> None:
    """Patch ``patcher``'s SDK when the application imports it; at once if it already has.

    An SDK that is not installed is never imported, so its hook never runs: no version look-up
    at start-up. The hook runs inside the application's import and never raises into it.
    """
    package = patcher.module
    _on_import[package] = patcher
    _patched.append(patcher)
    if package not in _hooked:
        _hooked.add(package)
        # wrapt calls the hook at once when the package is already imported.
        wrapt.register_post_import_hook(_hook(package), package)
    elif package in sys.modules:
        _apply(patcher)


def _hook(package: str) -> Any:
    def on_import(module: object) -> None:
        patcher = _on_import.get(package)
        if patcher is not None:
            _apply(patcher)

    return on_import


def _apply(patcher: Any) -> None:
    if getattr(patcher, "_sg_applied", False):
        return
    patcher._sg_applied = True
    try:
        patcher.patch()
    except Exception as exc:  # one SDK's patch failing must not break the app or the others
        log.warning("StreamGuard could not patch %s: %r", patcher.name, exc)


def uninstrument() -> None:
    """Restore the SDKs exactly, stop open streams (reason ``shutdown``), flush receipts."""
    global _instrumented
    with _lock:
        while _patched:
            undo = _patched.pop()
            package = undo.module
            if _on_import.get(package) is undo:  # a later import must not patch it again
                del _on_import[package]
            undo.unpatch()
        runtime = set_runtime(None)
        if runtime is not None:
            runtime.shutdown()
        stop_background_loop()
        _instrumented = False


def is_instrumented() -> bool:
    return _instrumented
