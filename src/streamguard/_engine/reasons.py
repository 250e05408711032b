"""The engine's stop-reason vocabulary, defined at the floor (``streamguard._reasons``) so
that the receipt model, below the engine, can name it too. Floor: ``_engine``."""

from streamguard._reasons import Category, Outcome, StopReason

__all__ = ["Category", "Outcome", "StopReason"]
