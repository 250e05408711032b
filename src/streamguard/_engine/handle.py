"""The application's handle on a stream, and the process registry of open streams."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamguard._engine import ports
from streamguard._engine.core import StreamCore
from streamguard._engine.lifecycle import CLOSED
from streamguard._engine.reasons import StopReason

if TYPE_CHECKING:
    from streamguard._receipts.model import Receipt

__all__ = ["RECEIPT_WAIT", "StreamHandle", "active_streams", "cancel_stream", "to_reason"]

RECEIPT_WAIT = 10.0
"""How long ``StreamHandle.receipt`` waits for the receipt of an ended stream to be sealed."""


def to_reason(reason: StopReason | str) -> StopReason:
    try:
        return StopReason(reason)
    except ValueError:
        known = ", ".join(r.value for r in StopReason)
        raise ValueError(f"Unknown stop reason {reason!r}; use one of: {known}.") from None


class StreamHandle:
    """``stream_id``, live ``stats``, ``cancel(reason)`` and, once final, ``receipt``."""

    __slots__ = ("_core",)

    def __init__(self, core: StreamCore) -> None:
        self._core = core

    @property
    def stream_id(self) -> str:
        return self._core.stream_id

    @property
    def provider(self) -> str:
        return self._core.provider

    @property
    def model(self) -> str | None:
        return self._core.model

    @property
    def stats(self) -> dict[str, Any]:
        """The counters at one instant (a fresh dict each time)."""
        return self._core.snapshot()

    @property
    def receipt(self) -> Receipt | None:
        """The signed receipt once the stream has ended, else None.

        A stream's receipt is sealed off the application's thread, just after its upstream
        closed: read after the stream ended (``close()`` returned, the loop finished or raised),
        this waits for that seal (at most ``RECEIPT_WAIT`` seconds) rather than answer None.
        While the stream runs, or while an async close is still pending on its event loop, it
        is None at once (``wait_receipt`` / ``await``-able waits are for those).
        """
        core = self._core
        receipt = core.receipt
        if receipt is None and core.phase == CLOSED:
            return core.wait_final(RECEIPT_WAIT)
        return receipt

    def cancel(
        self, reason: StopReason | str = StopReason.MANUAL, detail: str | None = None
    ) -> bool:
        """Stop the stream now. True if this call stopped it; a second call is a no-op."""
        return self._core.request_stop(to_reason(reason), detail or "cancelled by the application")

    def wait_receipt(self, timeout: float | None = None) -> Receipt | None:
        """Block until the receipt is sealed (or ``timeout`` seconds); returns it."""
        return self._core.wait_final(timeout)

    def __repr__(self) -> str:
        core = self._core
        return f"<StreamHandle {core.stream_id} {core.provider} {core.model} {core.stop_reason}>"


def active_streams() -> list[StreamHandle]:
    """Handles on every stream of this process that has no receipt yet."""
    return [StreamHandle(core) for core in ports.host().active()]


def cancel_stream(
    stream_id: str, reason: StopReason | str = StopReason.MANUAL, detail: str | None = None
) -> bool:
    """Stop the stream ``stream_id``: in this process, or, with ``STREAMGUARD_REDIS_URL`` set,
    in whichever process or replica runs it. True if it was stopped here or a cancel was
    published to at least one other process; False if unknown or already stopped."""
    stop = to_reason(reason)
    runtime = ports.host()
    core = runtime.find(stream_id)
    if core is not None:
        return core.request_stop(stop, detail or "cancelled by stream id")
    if runtime.remote is not None:
        published = runtime.remote.publish(stream_id, str(stop), detail or "cancelled by stream id")
        return bool(published > 1)
    return False
