"""Prices from the maintained genai-prices table, with user overrides. Decimal strings only."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["Price", "Pricing"]

_MTOK = Decimal(1_000_000)
# StreamGuard's provider names (GenAI semantic conventions) -> genai-prices provider ids.
_PROVIDER_IDS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "mistral_ai": "mistral",
}


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token."""

    input: Decimal
    output: Decimal
    source: str = "override"
    cached_input: Decimal | None = None  # cache reads; None: priced as input


PriceFunction = Callable[[str, str], Price | None]


class Pricing:
    """Looks prices up once per (provider, model) and caches them."""

    def __init__(
        self,
        overrides: Mapping[str, Price] | None = None,
        price_function: PriceFunction | None = None,
    ) -> None:
        self._overrides = dict(overrides or {})
        self._function = price_function
        self._cache: dict[tuple[str, str], Price | None] = {}
        self._lock = threading.Lock()
        self._warmup: threading.Thread | None = None

    def warm_up(self) -> None:
        """Loads the price table (~90 ms) on a short-lived background thread, off the
        application's threads, rather than on the thread that finalizes the first stream.

        A module being imported already sits in ``sys.modules``, half made, and libraries look
        their optional dependencies up there (openai looks for ``httpx2`` on every client it
        builds, and fails on a half-made one). So the thread imports only the table's own
        modules: the packages the table needs are imported first, on the caller's thread."""
        for name in _table_dependencies():
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        self._warmup = threading.Thread(
            target=self.price, args=("openai", "gpt-4o"), name="streamguard-warmup", daemon=True
        )
        self._warmup.start()

    def settle(self, timeout: float = 10.0) -> None:
        """Waits for the warm-up to end. Called before ``os.fork()``: a child forked while the
        warm-up imports the table would inherit the module's import lock held by a thread it
        does not have, and hang on its first receipt."""
        thread = self._warmup
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def price(self, provider: str, model: str | None) -> Price | None:
        if not model:
            return None
        key = (provider, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._lookup(provider, model)
        with self._lock:
            self._cache[key] = found
        return found

    def _lookup(self, provider: str, model: str) -> Price | None:
        if model in self._overrides:
            return self._overrides[model]
        if self._function is not None:
            price = self._function(provider, model)
            if price is not None:
                return price
        provider_id = _PROVIDER_IDS.get(provider)
        if provider_id is None:
            return None
        from genai_prices import Usage, calc_price

        million = 1_000_000
        try:
            per_input = calc_price(Usage(input_tokens=million), model, provider_id=provider_id)
            per_output = calc_price(Usage(output_tokens=million), model, provider_id=provider_id)
            per_cached = calc_price(
                Usage(input_tokens=million, cache_read_tokens=million),
                model,
                provider_id=provider_id,
            )
        except LookupError:
            return None
        return Price(
            Decimal(per_input.total_price) / _MTOK,
            Decimal(per_output.total_price) / _MTOK,
            "genai-prices",
            Decimal(per_cached.total_price) / _MTOK,
        )


def _table_dependencies() -> list[str]:
    """The import names of the packages genai-prices requires (its extras left out)."""
    try:
        requirements = importlib.metadata.requires("genai-prices") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names: list[str] = []
    for requirement in requirements:
        found = _REQUIREMENT_NAME.match(requirement)
        if found is None or "extra" in requirement.partition(";")[2]:
            continue
        name = found.group(0).lower().replace("-", "_").replace(".", "_")
        if name not in names:
            names.append(name)
    return names


_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def money(amount: Decimal) -> str:
    """A USD amount as a plain decimal string (no exponent)."""
    return format(amount.normalize(), "f") if amount else "0"
