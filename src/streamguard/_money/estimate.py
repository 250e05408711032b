"""Token estimates for chunks whose provider reports no count, and expected answer lengths."""

from __future__ import annotations

import threading

from streamguard._engine.estimate import estimate_tokens

__all__ = ["LengthModel", "estimate_tokens"]


class LengthModel:
    """Running average of completed output lengths per model, for the prevented estimate."""

    def __init__(self, default: int) -> None:
        self._default = default
        self._lock = threading.Lock()
        self._stats: dict[str, tuple[int, int]] = {}  # model -> (count, total tokens)

    def expected(self, model: str | None) -> int:
        stats = self._stats.get(model or "")
        if not stats:
            return self._default
        count, total = stats
        return max(1, round(total / count))

    def observe(self, model: str | None, tokens: int) -> None:
        with self._lock:
            count, total = self._stats.get(model or "", (0, 0))
            self._stats[model or ""] = (count + 1, total + tokens)
