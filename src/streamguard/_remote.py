"""Cross-process cancel over Redis pub/sub: ``cancel_stream(id)`` reaches every replica.

With ``STREAMGUARD_REDIS_URL`` set, each process subscribes to one channel in a daemon thread
and stops the streams it holds when their id is published. ``shutdown()`` ends the thread.
A forked child gets a listener of its own (``restarted``, called from the runtime's at-fork
hook): its own connections and thread; the parent's are left alone.

Floor: ``_runtime`` (process-wide state: a thread and Redis connections of the process; it
imports the engine and ``_extras``, and is wired in by the runtime).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from streamguard._engine.handle import to_reason
from streamguard._extras import require

if TYPE_CHECKING:
    from streamguard._engine.ports import Host

__all__ = ["RemoteCancel"]

log = logging.getLogger("streamguard")
CHANNEL = "streamguard:cancel"


class RemoteCancel:
    def __init__(self, url: str, runtime: Host, *, wait: bool = True) -> None:
        require("redis", feature="Cross-process cancel (STREAMGUARD_REDIS_URL)", extra="redis")
        import redis

        self._url = url
        self._client: Any = redis.Redis.from_url(url, socket_connect_timeout=1.0)
        self._runtime = runtime
        self._stop = threading.Event()
        self._pubsub: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="streamguard-remote-cancel", daemon=True
        )
        self._thread.start()
        if wait:
            self._ready.wait(2.0)

    @property
    def listening(self) -> bool:
        """The listener subscribed (or gave up because Redis is unreachable)."""
        return self._ready.is_set()

    def wait_listening(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def restarted(self) -> RemoteCancel:
        """A listener of a forked child's own: new connections, a new thread, not waited for.

        Call it in the child only. The inherited client and pub/sub connection are dropped,
        not used: their sockets are the parent's (redis-py never shuts down a socket that
        another process opened, so collecting them here leaves the parent's subscription be).
        """
        return RemoteCancel(self._url, self._runtime, wait=False)

    def publish(self, stream_id: str, reason: str, detail: str | None) -> int:
        """Ask every process to stop ``stream_id``; returns how many processes listened."""
        message = json.dumps({"stream_id": stream_id, "reason": reason, "detail": detail})
        return int(self._client.publish(CHANNEL, message))

    def _run(self) -> None:
        try:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(CHANNEL)
        except Exception as exc:
            log.warning("StreamGuard cross-process cancel is off: Redis is unreachable (%r)", exc)
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except Exception as exc:  # Redis went away: retry quietly until shutdown
                log.debug("StreamGuard remote cancel: %r", exc)
                self._stop.wait(0.5)
                continue
            if not message or message.get("type") != "message":
                continue
            try:
                data = json.loads(message["data"])
                core = self._runtime.find(str(data["stream_id"]))
                if core is not None:
                    core.request_stop(
                        to_reason(data.get("reason") or "manual"),
                        data.get("detail") or "cancelled from another process",
                    )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("StreamGuard ignored a malformed cancel message: %r", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        try:
            if self._pubsub is not None:
                self._pubsub.close()
            self._client.close()
        except Exception as exc:  # closing a dead connection must not fail shutdown
            log.debug("StreamGuard remote cancel close: %r", exc)
