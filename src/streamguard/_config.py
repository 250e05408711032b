"""Options of ``instrument()``: every one has an environment variable; arguments win.

Bad values fail here, at set-up, with a ``ConfigurationError`` naming the variable, never later
inside a stream.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from streamguard.exceptions import ConfigurationError

__all__ = ["Options"]


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError("must be a finite number of seconds >= 0")
    return seconds


def _count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise ValueError("must be a whole number >= 1") from None
    if count < 1:
        raise ValueError("must be a whole number >= 1")
    return count


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be one of true/false/1/0/yes/no/on/off")


def _usd(value: str) -> str:
    from decimal import Decimal, InvalidOperation

    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError("must be a decimal amount of USD") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a decimal amount of USD >= 0")
    return value


#: When StreamGuard cancels a background response (openai Responses ``background=True``) that
#: it stops: on policy and operator stops (the default), on every stop, or never.
CANCEL_BACKGROUND = ("policy", "always", "never")


def _cancel_background(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in CANCEL_BACKGROUND:
        raise ValueError("must be one of policy/always/never")
    return lowered


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


# field name -> (environment variable, parser). Secrets are parsed by the signing module.
_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "max_buffered": ("STREAMGUARD_MAX_BUFFERED", _count),
    "max_inflight": ("STREAMGUARD_MAX_INFLIGHT", _count),
    "stall_timeout": ("STREAMGUARD_STALL_TIMEOUT", _seconds),
    "deadline": ("STREAMGUARD_DEADLINE", _seconds),
    "idle_timeout": ("STREAMGUARD_IDLE_TIMEOUT", _seconds),
    "cancel_grace": ("STREAMGUARD_CANCEL_GRACE", _seconds),
    "include_usage": ("STREAMGUARD_INCLUDE_USAGE", _flag),
    "ledger_path": ("STREAMGUARD_LEDGER_PATH", _text),
    "ledger_id": ("STREAMGUARD_LEDGER_ID", _text),
    "signing_key": ("STREAMGUARD_SIGNING_KEY", str),
    "signing_key_file": ("STREAMGUARD_SIGNING_KEY_FILE", _text),
    "key_id": ("STREAMGUARD_KEY_ID", _text),
    "redis_url": ("STREAMGUARD_REDIS_URL", _text),
    "expected_output_tokens": ("STREAMGUARD_EXPECTED_OUTPUT_TOKENS", _count),
    "max_output_tokens": ("STREAMGUARD_MAX_OUTPUT_TOKENS", _count),
    "budget_usd": ("STREAMGUARD_BUDGET_USD", _usd),
    "budget_window": ("STREAMGUARD_BUDGET_WINDOW", _text),
    "budget_scope": ("STREAMGUARD_BUDGET_SCOPE", str),
    "cancel_background": ("STREAMGUARD_CANCEL_BACKGROUND", _cancel_background),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """Everything ``instrument()`` can be told. ``None`` turns a timer off.

    - ``max_buffered`` (N): produced units the guard holds before the producer waits.
    - ``max_inflight`` (M): units handed over but not yet consumed before taking waits.
    - ``stall_timeout``: seconds a consumer may take nothing before ``consumer_stalled``.
    - ``deadline``: seconds a stream may run in all before ``deadline_exceeded``.
    - ``idle_timeout``: seconds without a chunk from upstream before ``upstream_idle``.
    - ``cancel_grace``: seconds a StreamSession producer gets to honour ``cancel_event``.
    - ``expected_output_tokens``: expected answer length before a model has history, for
      the prevented estimate.
    - ``max_output_tokens``: stop a stream (``max_output_tokens``) past this many tokens.
    - ``budget_usd``/``budget_window``/``budget_scope``: one budget from the environment
      (e.g. "25", "1d", "tenant"); code passes ``budgets=[Budget(...)]`` to ``instrument()``.
    - ``cancel_background``: a background response (openai ``responses.create(background=True,
      stream=True)``) goes on generating on the server when its stream is closed; StreamGuard
      calls ``responses.cancel(id)`` after stopping one: ``"policy"`` on policy and operator
      stops (budget, content policy, output cap, deadline, ``cancel()``), ``"always"`` on every
      stop (the consumer leaving too), ``"never"``. docs/entry-points.md says why.
    """

    max_buffered: int = 64
    max_inflight: int = 8
    stall_timeout: float | None = 30.0
    deadline: float | None = None
    idle_timeout: float | None = None
    cancel_grace: float = 1.0
    include_usage: bool = True
    ledger_path: str | None = None
    ledger_id: str | None = None
    signing_key: str | None = dataclasses.field(default=None, repr=False)
    signing_key_file: str | None = None
    key_id: str | None = None
    redis_url: str | None = dataclasses.field(default=None, repr=False)
    expected_output_tokens: int = 512
    max_output_tokens: int | None = None
    budget_usd: str | None = None
    budget_window: str | None = None
    budget_scope: str | None = None
    cancel_background: str = "policy"

    @classmethod
    def resolve(
        cls, arguments: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Options:
        """Merge the environment with ``arguments`` (which win) and validate everything."""
        environ = os.environ if environ is None else environ
        arguments = dict(arguments or {})
        unknown = set(arguments) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigurationError(
                f"Unknown StreamGuard option(s): {', '.join(sorted(unknown))}. "
                f"Known options: {', '.join(f.name for f in dataclasses.fields(cls))}."
            )
        values: dict[str, Any] = {}
        for name, (variable, parse) in _ENV.items():
            raw = environ.get(variable)
            if raw is None or name in arguments:
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                # The value itself is not echoed: the variable may hold a secret.
                raise ConfigurationError(
                    f"{variable} is invalid: it {exc}. Fix or unset the variable.",
                    variable=variable,
                ) from None
        for name, value in arguments.items():
            values[name] = _check_argument(name, value)
        return cls(**values)


def _check_argument(name: str, value: Any) -> Any:
    if value is None:
        return None
    variable = _ENV.get(name, (name, str))[0]
    if name in {"stall_timeout", "deadline", "idle_timeout", "cancel_grace"}:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(
                f"{name} must be a number of seconds (argument, or {variable}).", variable=name
            )
        if not value >= 0 or value == float("inf"):
            raise ConfigurationError(
                f"{name} must be a finite number of seconds >= 0, got {value!r}.", variable=name
            )
        return float(value)
    if name == "cancel_background" and value not in CANCEL_BACKGROUND:
        raise ConfigurationError(
            f"cancel_background must be one of {', '.join(CANCEL_BACKGROUND)}, got {value!r}.",
            variable=name,
        )
    counts = {"max_buffered", "max_inflight", "expected_output_tokens", "max_output_tokens"}
    if name in counts and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigurationError(
            f"{name} must be a whole number >= 1, got {value!r}.", variable=name
        )
    return value
