"""Streaming policies: check the output as it streams, and stop it before blocked text is
handed over.

Strategies decide when the check runs on the text accumulated so far:

- ``continuous``: every chunk (most protective, most checks);
- ``periodic``: every ``every_chars`` characters, ``every_tokens`` tokens or ``every_ms``
  milliseconds, whichever comes first (the default: every 500 characters);
- ``sentence_boundary``: when a sentence ends, or ``max_buffer_chars`` arrived without one;
- ``end_only``: once, when the stream completes (it can flag, not prevent).

The check gets the accumulated text and returns a ``Verdict`` (or a bool: True allows); it may
be sync or async. A block stops the stream as ``content_policy``: the chunk that triggered it
is never handed over and the application gets ``StreamBlocked``. With
``early_termination=False`` a block is recorded in the receipt's attributes and the stream
goes on. Example::

    def no_secrets(text: str) -> Verdict:
        return Verdict.block("secret", "a key was printed") if "sk-" in text else Verdict.allow()

    streamguard.instrument(policies=[StreamPolicy(no_secrets, strategy="sentence_boundary")])
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from streamguard._engine.reasons import StopReason
from streamguard.exceptions import ConfigurationError, StreamBlocked

if TYPE_CHECKING:
    from streamguard._engine.core import StreamCore

__all__ = ["PolicyRun", "StreamPolicy", "Verdict"]

Strategy = Literal["end_only", "periodic", "sentence_boundary", "continuous"]
# Sentence ends in Latin and CJK scripts (the full-width marks are meant: RUF001 does not apply).
_SENTENCE_END = re.compile(r"[.!?…。！？](?:[\"')\]]*)(?:\s|$)")  # noqa: RUF001


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    category: str | None = None
    message: str | None = None

    @classmethod
    def allow(cls) -> Verdict:
        return _ALLOW

    @classmethod
    def block(cls, category: str, message: str | None = None) -> Verdict:
        return cls(False, category, message)


_ALLOW = Verdict(True)
Check = Callable[[str], "Verdict | bool | Awaitable[Verdict | bool | None] | None"]


def _verdict(value: Any) -> Verdict:
    if isinstance(value, Verdict):
        return value
    if value is None or value is True:
        return _ALLOW
    if value is False:
        return Verdict(False, "blocked", None)
    raise TypeError(f"A policy check must return a Verdict or a bool, got {value!r}.")


@dataclasses.dataclass(frozen=True, slots=True)
class StreamPolicy:
    check: Check
    strategy: Strategy = "periodic"
    every_chars: int | None = 500
    every_tokens: int | None = None
    every_ms: int | None = None
    max_buffer_chars: int = 10_000
    early_termination: bool = True
    name: str = "policy"

    def __post_init__(self) -> None:
        if self.strategy not in ("end_only", "periodic", "sentence_boundary", "continuous"):
            raise ConfigurationError(
                f"Unknown policy strategy {self.strategy!r}: use end_only, periodic, "
                "sentence_boundary or continuous."
            )
        if self.strategy == "periodic" and not (
            self.every_chars or self.every_tokens or self.every_ms
        ):
            raise ConfigurationError(
                "A periodic policy needs every_chars, every_tokens or every_ms."
            )

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.check)

    def start(self) -> PolicyRun:
        return PolicyRun(self)


class PolicyRun:
    """One policy's state on one stream: the accumulated text and when it was last checked."""

    __slots__ = ("acc", "chars_since", "evaluations", "last_ns", "policy", "tokens_since")

    def __init__(self, policy: StreamPolicy) -> None:
        self.policy = policy
        self.acc: str | None = ""
        self.chars_since = 0
        self.tokens_since = 0
        self.last_ns = time.monotonic_ns()
        self.evaluations = 0

    def due(self, text: str, tokens: int) -> bool:
        """Take in one chunk's text; say whether the check must run now."""
        if text:
            # Grown in place: with the attribute cleared, the local holds the only reference,
            # so CPython resizes the string instead of copying it (amortised O(1) per chunk).
            acc, self.acc = self.acc, None
            acc += text  # type: ignore[operator]
            self.acc = acc
        self.chars_since += len(text)
        self.tokens_since += tokens
        policy = self.policy
        strategy = policy.strategy
        if strategy == "continuous":
            return True
        if strategy == "end_only":
            return False
        if strategy == "sentence_boundary":
            return bool(_SENTENCE_END.search(text)) or self.chars_since >= policy.max_buffer_chars
        return bool(
            (policy.every_chars and self.chars_since >= policy.every_chars)
            or (policy.every_tokens and self.tokens_since >= policy.every_tokens)
            or (
                policy.every_ms
                and time.monotonic_ns() - self.last_ns >= policy.every_ms * 1_000_000
            )
        )

    def text(self) -> str:
        return self.acc or ""

    def _reset(self) -> None:
        self.chars_since = self.tokens_since = 0
        self.last_ns = time.monotonic_ns()
        self.evaluations += 1

    def evaluate(self) -> Verdict:
        self._reset()
        result = self.policy.check(self.text())
        if inspect.isawaitable(result):
            result = _run_sync(result)
        return _verdict(result)

    async def evaluate_async(self) -> Verdict:
        self._reset()
        result = self.policy.check(self.text())
        if inspect.isawaitable(result):
            result = await result
        return _verdict(result)

    def apply(self, core: StreamCore, verdict: Verdict) -> None:
        """Stop the stream for a block (or record it, without early termination)."""
        if verdict.allowed:
            return
        category = verdict.category or "blocked"
        if not self.policy.early_termination or core.stop_reason is not None:
            core.set_attributes({f"policy.{self.policy.name}": category})
            return
        message = verdict.message or f"the output was blocked by policy {self.policy.name!r}"
        core.stop_exc = StreamBlocked(
            f"Output blocked ({category}): {message}.", stream_id=core.stream_id, category=category
        )
        core.request_stop(StopReason.CONTENT_POLICY, f"{category}: {message}")


def _run_sync(awaitable: Awaitable[Any]) -> Any:
    """An async check on a sync stream runs on StreamGuard's background loop."""
    from streamguard._engine.loopthread import background_loop

    async def run() -> Any:
        return await awaitable

    return asyncio.run_coroutine_threadsafe(run(), background_loop()).result()


def sync_checker(runs: list[PolicyRun]) -> Callable[[StreamCore, Any, int], None]:
    """The per-chunk check for ``core.checks`` (sync streams, and sync policies anywhere)."""

    def check(core: StreamCore, chunk: Any, tokens: int) -> None:
        text = core.text_of(chunk) if core.text_of is not None else None
        for run in runs:
            if run.due(text or "", tokens):
                run.apply(core, run.evaluate())
                if core.stop_reason is not None:
                    return

    return check


def finish(core: StreamCore, runs: list[PolicyRun]) -> None:
    """At completion: the end-only policies (and any text not yet checked) get their turn."""
    for run in runs:
        if run.policy.strategy == "end_only" or run.chars_since:
            verdict = run.evaluate()
            if not verdict.allowed:
                core.set_attributes({f"policy.{run.policy.name}": verdict.category or "blocked"})
