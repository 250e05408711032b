"""A stream's spending: pre-flight reservation, per-chunk charges, settlement at the end."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streamguard._engine.reasons import StopReason
from streamguard._money.budget import Account, Budget, BudgetStore, to_nano
from streamguard._money.estimate import estimate_tokens
from streamguard._money.pricing import Price

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore

__all__ = ["Spend", "estimate_input_tokens", "open_spend"]

_PROMPT_KEYS = (
    "messages",
    "input",
    "inputs",
    "prompt",
    "suffix",
    "contents",
    "system",
    "instructions",
)


def estimate_input_tokens(kwargs: Mapping[str, Any]) -> int:
    """A rough count of the prompt's tokens, for the pre-flight reservation only."""
    total = 0
    for key in _PROMPT_KEYS:
        value = kwargs.get(key)
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        total += estimate_tokens(text)
    return total


class Spend:
    """Charges each unit's cost to every budget of the stream; stops it when one runs out."""

    __slots__ = ("accounts", "in_nano", "out_nano")

    def __init__(self, accounts: list[Account], price: Price) -> None:
        self.accounts = accounts
        self.in_nano = to_nano(price.input)
        self.out_nano = to_nano(price.output)

    def __call__(self, core: StreamCore, chunk: object, tokens: int) -> None:
        cost = tokens * self.out_nano
        for account in self.accounts:
            if not account.charge(cost):
                core.stop_exc = account.exceeded(core.stream_id)
                core.request_stop(StopReason.BUDGET_EXCEEDED, f"{account.description} is spent")
                return

    def settle(self, input_tokens: int | None, output_tokens: int) -> None:
        actual = (input_tokens or 0) * self.in_nano + output_tokens * self.out_nano
        for account in self.accounts:
            account.close(actual)


def open_spend(
    core: StreamCore,
    budgets: Sequence[Budget],
    store: BudgetStore,
    scope: Mapping[str, str],
    input_estimate: int,
    *,
    price: Price | None,
    expected_output: int,
    warn_once: Callable[[str, str], None],
) -> Spend | None:
    """Reserve the worst case in every budget, or reject the stream before its request.

    Raises ``BudgetExceeded`` (after sealing a ``rejected`` receipt) when a budget has nothing
    left. Returns None when there are no budgets or the model has no known price (a budget is
    in USD: without a price it cannot be enforced, and a warning says so once).
    """
    if not budgets:
        return None
    if price is None:
        warn_once(
            f"budget-unpriced-{core.provider}-{core.model}",
            f"StreamGuard cannot enforce USD budgets for {core.provider} model {core.model!r}: "
            "it has no known price. Add one with instrument(prices=...).",
        )
        return None
    spend = Spend([Account(b, store, scope) for b in budgets], price)
    output = core.request_max_tokens or expected_output
    upfront = input_estimate * spend.in_nano
    worst = upfront + output * spend.out_nano
    for index, account in enumerate(spend.accounts):
        if not account.open(worst, upfront):
            for opened in spend.accounts[: index + 1]:
                opened.close(0)
            error = account.exceeded(core.stream_id)
            core.stop_exc = error
            core.request_stop(
                StopReason.BUDGET_EXCEEDED,
                f"{account.description} is spent: rejected before the request",
                rejected=True,
            )
            raise error
    return spend
