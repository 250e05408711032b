"""A stream's phases, in order: open, stopping (a stop is decided, the upstream is being shut),
closed (the upstream is shut), final (the receipt is sealed). Floor: ``_engine``; imports
nothing, so that every engine module (the watchdog too) can name them."""

OPEN, STOPPING, CLOSED, FINAL = 0, 1, 2, 3

__all__ = ["CLOSED", "FINAL", "OPEN", "STOPPING"]
