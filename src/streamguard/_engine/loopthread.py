"""A private event loop in a daemon thread, for StreamSessions started outside any loop."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["background_loop", "stop_background_loop"]

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared background loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=run, name="streamguard-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def stop_background_loop(timeout: float = 2.0) -> None:
    """Stop and close the background loop if it runs (``shutdown()``, tests)."""
    global _loop, _thread
    with _lock:
        loop, thread, _loop, _thread = _loop, _thread, None, None
    if loop is None or thread is None:
        return
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout)
    if not thread.is_alive():
        loop.close()


_inherited: list[asyncio.AbstractEventLoop] = []


def forget_after_fork() -> None:
    """In a forked child: the parent's loop thread does not exist here; start afresh on use.

    The parent's loop is kept referenced, never closed or collected in the child: its selector
    and self-pipe are the parent's (closing them here would only close the child's copies, but
    a loop that believes it is running refuses to close and warns when collected).
    """
    global _lock, _loop, _thread
    if _loop is not None:
        _inherited.append(_loop)
    _lock = threading.Lock()
    _loop = None
    _thread = None
