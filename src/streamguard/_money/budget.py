"""Budgets: a spending limit per scope and window, held under concurrency and across processes.

How a stream spends (amounts are integer nano-dollars in the stores, so they add exactly):

1. Pre-flight, before any HTTP request: the stream reserves its worst case (input estimate at
   the input price plus ``max_tokens`` at the output price). A budget with nothing left raises
   ``BudgetExceeded``; the request is never sent and the receipt's outcome is ``rejected``.
   Reserving up front is what keeps concurrent streams from jointly overshooting the limit.
2. Per chunk, the chunk's cost is charged against the stream's own reservation (no store call).
   A stream that outgrows its reservation asks the store for more; when the budget has no more,
   the stream stops as ``budget_exceeded`` and the unpaid chunk is never handed over.
3. At the end the actual cost (exact usage when the provider reports it) is settled and the
   unused reservation released.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Literal, Protocol

from streamguard.exceptions import BudgetExceeded, ConfigurationError

__all__ = ["Account", "Budget", "BudgetStore", "InMemoryBudgetStore", "StoreUnavailable", "to_nano"]

log = logging.getLogger("streamguard")
NANO = Decimal(10) ** 9
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def to_nano(usd: Decimal) -> int:
    """USD to integer nano-dollars, rounded up: a budget never under-counts spend."""
    return math.ceil(usd * NANO)


def _no_listener(budget: str, failed_open: bool) -> None:
    pass


#: Told of every store failure (budget name, failed open?): the runtime counts them in the
#: ``streamguard.budget.store_errors`` metric. Set by the composition root, never imported up.
on_store_error: Callable[[str, bool], None] = _no_listener


class StoreUnavailable(Exception):
    """The budget store could not be reached (Redis down): the budget fails open or closed."""


class BudgetStore(Protocol):
    """Where budget usage lives: in memory (one process) or in Redis (every replica)."""

    def reserve(self, key: str, amount: int, limit: int, ttl: int | None) -> int:
        """Atomically grant up to ``amount`` of what is left under ``limit``; return the grant."""

    def settle(self, key: str, reserved: int, spent: int, ttl: int | None) -> None:
        """Release ``reserved`` and record ``spent`` (both nano-USD)."""

    def usage(self, key: str) -> tuple[int, int]:
        """(spent, reserved) nano-USD."""


class InMemoryBudgetStore:
    """The default store: exact under threads, for one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, list[int]] = {}  # key -> [spent, reserved, expires_at_ns or 0]

    def _entry(self, key: str, ttl: int | None) -> list[int]:
        now = time.monotonic_ns()
        entry = self._data.get(key)
        if entry is None or (entry[2] and entry[2] <= now):
            entry = [0, 0, now + ttl * 10**9 if ttl else 0]
            self._data[key] = entry
        return entry

    def reserve(self, key: str, amount: int, limit: int, ttl: int | None) -> int:
        with self._lock:
            entry = self._entry(key, ttl)
            grant = max(0, min(amount, limit - entry[0] - entry[1]))
            entry[1] += grant
            return grant

    def settle(self, key: str, reserved: int, spent: int, ttl: int | None) -> None:
        with self._lock:
            entry = self._entry(key, ttl)
            entry[1] = max(0, entry[1] - reserved)
            entry[0] += spent

    def usage(self, key: str) -> tuple[int, int]:
        with self._lock:
            entry = self._entry(key, None)
            return entry[0], entry[1]


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit in USD for a scope and a window. Example::

        Budget(limit_usd="25", window="1d", scope=("tenant",))   # 25 USD per tenant per day

    ``window`` is seconds or a string like "30s", "15m", "1h", "1d", "1w"; windows are fixed
    and aligned to the Unix epoch; None means no window (a lifetime budget). ``scope`` names
    keys of ``streamguard.context(...)``; a stream without a scope key counts under "*".
    ``on_store_error`` says what happens when the store is unreachable: "open" lets streams
    through (with a warning and a metric), "closed" rejects them. ``store`` overrides the
    runtime's store (in-memory, or Redis when ``STREAMGUARD_REDIS_URL`` is set).
    """

    limit_usd: Decimal | str | int
    window: float | str | None = None
    scope: tuple[str, ...] = ()
    name: str = "default"
    on_store_error: Literal["open", "closed"] = "open"
    store: BudgetStore | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            limit = Decimal(str(self.limit_usd))
        except ArithmeticError:
            raise ConfigurationError(
                f"Budget limit_usd must be a decimal amount, got {self.limit_usd!r}."
            ) from None
        if not limit.is_finite() or limit < 0:
            raise ConfigurationError(f"Budget limit_usd must be >= 0, got {self.limit_usd!r}.")
        object.__setattr__(self, "limit_usd", limit)
        object.__setattr__(self, "window", _seconds(self.window))
        object.__setattr__(self, "scope", tuple(self.scope))
        if self.on_store_error not in ("open", "closed"):
            raise ConfigurationError("Budget on_store_error must be 'open' or 'closed'.")

    @property
    def limit_nano(self) -> int:
        return to_nano(Decimal(self.limit_usd))

    @property
    def ttl(self) -> int | None:
        return None if self.window is None else math.ceil(float(self.window))

    def key(self, scope: Mapping[str, str], now: float | None = None) -> str:
        """The store key for ``scope`` in the current window."""
        parts = [f"{name}={scope.get(name, '*')}" for name in self.scope]
        key = f"{self.name}|{','.join(parts)}"
        if self.window is not None:
            bucket = int((time.time() if now is None else now) // float(self.window))
            key += f"|w{bucket}"
        return key

    def describe(self, scope: Mapping[str, str]) -> str:
        parts = ", ".join(f"{name}={scope.get(name, '*')}" for name in self.scope)
        return f"budget {self.name!r}" + (f" ({parts})" if parts else "")


def _seconds(window: float | str | None) -> float | None:
    if window is None:
        return None
    if isinstance(window, str):
        match = _WINDOW.match(window)
        if not match:
            raise ConfigurationError(
                f"Budget window {window!r} is not like '30s', '15m', '1h', '1d'."
            )
        return float(match.group(1)) * _UNITS[match.group(2)]
    if isinstance(window, bool) or not isinstance(window, int | float) or window <= 0:
        raise ConfigurationError(f"Budget window must be > 0 seconds, got {window!r}.")
    return float(window)


class Account:
    """One stream's share of one budget: its reservation and what it has spent."""

    __slots__ = ("budget", "description", "key", "limit", "reserved", "spent", "store", "ttl")

    def __init__(self, budget: Budget, store: BudgetStore, scope: Mapping[str, str]) -> None:
        self.budget = budget
        self.store = budget.store or store
        self.key = budget.key(scope)
        self.description = budget.describe(scope)
        self.limit = budget.limit_nano
        self.ttl = budget.ttl
        self.reserved = 0
        self.spent = 0

    def open(self, worst_case: int, upfront: int) -> bool:
        """Reserve the worst case (or what is left) and pay ``upfront`` (the prompt) from it.

        False when not even the prompt can be paid: the request must not be sent.
        """
        try:
            self.reserved = self.store.reserve(self.key, max(worst_case, 1), self.limit, self.ttl)
        except StoreUnavailable:
            if self._store_down():
                self.spent = upfront
                return True
            return False
        if self.reserved <= 0 or self.reserved < upfront:
            return False
        self.spent = upfront
        return True

    def charge(self, cost: int) -> bool:
        """Pay ``cost`` from the reservation, asking the store for more when it runs out."""
        if self.spent + cost <= self.reserved:
            self.spent += cost
            return True
        missing = self.spent + cost - self.reserved
        try:
            extra = self.store.reserve(self.key, missing, self.limit, self.ttl)
        except StoreUnavailable:
            if not self._store_down():
                return False
            extra = missing
        self.reserved += extra
        if extra < missing:
            return False
        self.spent += cost
        return True

    def close(self, actual: int | None = None) -> None:
        """Settle: record the actual spend (default: what was charged), release the rest."""
        spent = self.spent if actual is None else max(actual, 0)
        try:
            self.store.settle(self.key, self.reserved, spent, self.ttl)
        except StoreUnavailable:
            log.warning(
                "StreamGuard could not settle %s: the budget store is unreachable", self.description
            )
        self.reserved = 0

    def _store_down(self) -> bool:
        open_ = self.budget.on_store_error == "open"
        log.warning(
            "StreamGuard's budget store is unreachable; %s fails %s",
            self.description,
            "open (streams pass)" if open_ else "closed (streams are rejected)",
        )
        on_store_error(self.budget.name, open_)
        if open_:
            self.reserved = max(self.reserved, self.spent)
        return open_

    def exceeded(self, stream_id: str | None) -> BudgetExceeded:
        return BudgetExceeded(
            f"The {self.description} of {self.budget.limit_usd} USD is spent; the stream was "
            "stopped. Raise the limit, wait for the next window, or use a cheaper model.",
            stream_id=stream_id,
            scope=self.key,
            limit_usd=str(self.budget.limit_usd),
        )
