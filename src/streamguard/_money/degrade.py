"""A receipt that cannot be sealed as it is gets sealed degraded, never not at all (DESIGN G4).

Sealing fails when a value the receipt must hold is not one it can hold: an empty model or
provider name, a negative or 2**60 ``max_tokens``, an attribute that is a float, has an empty
key or an integer beyond +-(2**53-1), usage a provider reported as a negative count. Those
values come from the application or the provider, not from StreamGuard; the stream still ran
and must get its one receipt. ``degrade`` replaces each such value of the core with what is
true and valid (unknown: ``None``; a name: ``"unknown"``; an attribute: left out) and says so in
the detail, so the receipt claims nothing StreamGuard did not see and hides nothing it dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamguard._receipts import _validate as v

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore

__all__ = ["degrade"]


def _text_ok(value: object) -> bool:
    try:
        v.text("value", value)
    except (TypeError, ValueError):
        return False
    return True


def _count_ok(value: object) -> bool:
    try:
        v.optional_count("value", value)
    except (TypeError, ValueError):
        return False
    return True


def degrade(core: StreamCore, error: BaseException) -> list[str]:
    """Make every value of ``core`` that a receipt cannot hold valid; returns the changed
    fields' names (empty if none was: then the failure was not the values' and nothing is
    changed). The detail says which were left out and why the first seal failed."""
    changed: list[str] = []
    if not _text_ok(core.provider):
        core.provider = "unknown"
        changed.append("provider")
    if core.model is not None and not _text_ok(core.model):
        core.model = None
        changed.append("model")
    if not _text_ok(core.operation):
        core.operation = "unknown"
        changed.append("operation")
    if not _count_ok(core.request_max_tokens):
        core.request_max_tokens = None
        changed.append("request_max_tokens")
    for name in ("input_tokens", "cached_input_tokens", "usage_exact"):
        if not _count_ok(getattr(core, name)):
            setattr(core, name, None)
            changed.append(f"usage.{name}")
    kept: dict[str, str | int | bool] = {}
    for key, value in core.attributes.items():
        try:
            kept.update(v.attributes({key: value}))
        except (TypeError, ValueError):
            changed.append(f"attributes[{v.preview(key, 40)}]")
    core.attributes = kept
    if core.detail is not None and not isinstance(core.detail, str):
        core.detail = None
        changed.append("detail")
    if changed:
        note = (
            f"receipt degraded: {', '.join(changed)} could not be recorded "
            f"({type(error).__name__}: {str(error)[:120]})"
        )
        core.detail = f"{core.detail}; {note}" if core.detail else note
    return changed
