"""The per-chunk token estimate, for chunks whose provider reports no count.

Floor: ``_engine`` (imports nothing). It lives in the engine because every unit carries a
token count and StreamSession counts its producer's tokens with it; ``_money`` re-exports it
beside the expected-length model.
"""

from __future__ import annotations

__all__ = ["estimate_tokens"]


def estimate_tokens(text: str | None) -> int:
    """About four characters per token (rounded), at least one for any non-empty text.

    Cheap on purpose: it runs per chunk, on the event loop too. Exact provider usage replaces
    it at the end of a stream, and the difference is recorded as drift
    (``streamguard.estimate.drift``).
    """
    if not text:
        return 0
    return (len(text) + 2) >> 2 or 1  # max(1, ...) without a call: this runs per chunk
