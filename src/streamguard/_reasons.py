"""Stop reasons, their categories and the outcome each one gives (DESIGN section 4).

Floor: the bottom one, beside ``exceptions`` (imports nothing of StreamGuard). The engine
decides the reasons and the receipt model records them, so both stand on this vocabulary;
``streamguard._engine.reasons`` re-exports it for the engine's users.
"""

from __future__ import annotations

import enum

__all__ = ["Category", "Outcome", "StopReason"]


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REJECTED = "rejected"


class Category(enum.StrEnum):
    CLIENT = "client"
    POLICY = "policy"
    OPERATOR = "operator"
    UPSTREAM = "upstream"


class StopReason(enum.StrEnum):
    """Why a stream stopped. The first stop signal wins; later ones change nothing."""

    COMPLETED = "completed"
    CONSUMER_CLOSED = "consumer_closed"
    CONSUMER_CANCELLED = "consumer_cancelled"
    CLIENT_DISCONNECT = "client_disconnect"
    CONSUMER_STALLED = "consumer_stalled"
    BUDGET_EXCEEDED = "budget_exceeded"
    CONTENT_POLICY = "content_policy"
    MAX_OUTPUT_TOKENS = "max_output_tokens"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    MANUAL = "manual"
    SHUTDOWN = "shutdown"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_IDLE = "upstream_idle"

    @property
    def category(self) -> Category | None:
        return _CATEGORY[self]

    def outcome(self, *, rejected: bool = False) -> Outcome:
        """The receipt outcome; a budget stop before the request is ``rejected``."""
        if self is StopReason.COMPLETED:
            return Outcome.COMPLETED
        if self is StopReason.UPSTREAM_ERROR:
            return Outcome.FAILED
        if rejected:
            return Outcome.REJECTED
        return Outcome.CANCELLED


_CATEGORY: dict[StopReason, Category | None] = {
    StopReason.COMPLETED: None,
    StopReason.CONSUMER_CLOSED: Category.CLIENT,
    StopReason.CONSUMER_CANCELLED: Category.CLIENT,
    StopReason.CLIENT_DISCONNECT: Category.CLIENT,
    StopReason.CONSUMER_STALLED: Category.CLIENT,
    StopReason.BUDGET_EXCEEDED: Category.POLICY,
    StopReason.CONTENT_POLICY: Category.POLICY,
    StopReason.MAX_OUTPUT_TOKENS: Category.POLICY,
    StopReason.DEADLINE_EXCEEDED: Category.POLICY,
    StopReason.MANUAL: Category.OPERATOR,
    StopReason.SHUTDOWN: Category.OPERATOR,
    StopReason.UPSTREAM_ERROR: Category.UPSTREAM,
    StopReason.UPSTREAM_IDLE: Category.UPSTREAM,
}
