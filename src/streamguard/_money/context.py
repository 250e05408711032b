"""``streamguard.context(tenant=..., user=...)``: who a stream is for, on contextvars.

The scope is copied into every asyncio task created inside, and into threads started with
``asyncio.to_thread`` or ``contextvars.copy_context().run`` (a plain ``threading.Thread``
starts with an empty context in Python < 3.14; pass ``context=`` there or use ``to_thread``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamguard._engine.policy import StreamPolicy
    from streamguard._money.budget import Budget

__all__ = ["Limits", "context", "current_limits", "current_scope", "limits"]

_EMPTY: Mapping[str, str] = MappingProxyType({})
_scope: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "streamguard_scope", default=_EMPTY
)


class Limits:
    """Per-request budgets, policies and caps, attached with ``streamguard.limits(...)``."""

    __slots__ = ("budgets", "deadline", "max_output_tokens", "policies")

    def __init__(
        self,
        budgets: Sequence[Budget] = (),
        policies: Sequence[StreamPolicy] = (),
        max_output_tokens: int | None = None,
        deadline: float | None = None,
    ) -> None:
        self.budgets = tuple(budgets)
        self.policies = tuple(policies)
        self.max_output_tokens = max_output_tokens
        self.deadline = deadline


_NO_LIMITS = Limits()
_limits: contextvars.ContextVar[Limits] = contextvars.ContextVar(
    "streamguard_limits", default=_NO_LIMITS
)


@contextlib.contextmanager
def context(**scope: str) -> Iterator[Mapping[str, str]]:
    """Attribute the streams opened inside to a scope (budget keys, receipt attributes).

    Nested calls add to the outer scope. Example::

        with streamguard.context(tenant="acme", user="u-42"):
            stream = client.chat.completions.create(..., stream=True)
    """
    for key, value in scope.items():
        if not isinstance(value, str):
            raise TypeError(f"streamguard.context({key}=...) takes a string, got {value!r}.")
    merged = MappingProxyType({**_scope.get(), **scope})
    token = _scope.set(merged)
    try:
        yield merged
    finally:
        _scope.reset(token)


def current_scope() -> Mapping[str, str]:
    return _scope.get()


@contextlib.contextmanager
def limits(
    *,
    budget: Budget | Sequence[Budget] | None = None,
    policy: StreamPolicy | Sequence[StreamPolicy] | None = None,
    max_output_tokens: int | None = None,
    deadline: float | None = None,
) -> Iterator[Limits]:
    """Attach budgets, policies, an output cap or a deadline to the streams opened inside.

    They apply on top of those given to ``instrument()``. Example::

        with streamguard.limits(budget=Budget(limit_usd="5", window="1d", scope=("user",))):
            ...
    """
    outer = _limits.get()
    merged = Limits(
        outer.budgets + _as_tuple(budget),
        outer.policies + _as_tuple(policy),
        max_output_tokens if max_output_tokens is not None else outer.max_output_tokens,
        deadline if deadline is not None else outer.deadline,
    )
    token = _limits.set(merged)
    try:
        yield merged
    finally:
        _limits.reset(token)


def current_limits() -> Limits:
    return _limits.get()


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,)
