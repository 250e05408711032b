"""The public records of the test upstream: ``Fault`` (a misbehaviour to inject) and
``RequestRecord`` (what the upstream did for one request). Re-exported by
``streamguard.testing``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast

FaultKind = Literal["reset", "malformed", "http_error", "slow_first_token", "stall"]
_FAULT_KINDS: tuple[str, ...] = ("reset", "malformed", "http_error", "slow_first_token", "stall")
_DEFAULT_SECONDS = {"slow_first_token": 1.0, "stall": 60.0}


@dataclass(frozen=True)
class Fault:
    """A misbehaviour of the upstream, applied to one request.

    - ``reset``: after ``after_tokens`` tokens, abort the TCP connection (RST): the client sees
      a broken connection, never a clean end.
    - ``malformed``: after ``after_tokens`` tokens, send one frame whose payload is not JSON,
      then go on generating (the SDK raises and, if it closes the response, the upstream sees
      the disconnect). Without streaming, the whole body is invalid JSON.
    - ``http_error``: answer ``status`` (default 500) with the provider's JSON error body before
      any token; a 429 carries ``retry-after: 0``. SDKs retry 429 and 5xx by default: pass
      ``max_retries=0`` (a queued fault applies to one request only, so a retry succeeds).
    - ``slow_first_token``: the response starts at once, the first token comes ``seconds``
      (default 1.0) later.
    - ``stall``: after ``after_tokens`` tokens, stop generating and sending but keep the
      connection open until the client leaves or ``seconds`` (default 60) pass; then reset.

    ``after_tokens`` larger than the turn applies the fault where the turn would have ended.
    As a request header (which applies to every request that carries it, retries included):
    ``x-upstream-fault: reset;after=5``, ``http_error;status=429``,
    ``slow_first_token;seconds=0.3``, ``stall;after=2;seconds=5``.
    """

    kind: FaultKind
    after_tokens: int = 0
    status: int = 500
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {self.kind!r}; use one of {_FAULT_KINDS}.")
        if self.after_tokens < 0 or (self.seconds is not None and self.seconds < 0):
            raise ValueError("Fault after_tokens and seconds must not be negative.")
        if not 400 <= self.status <= 599:
            raise ValueError(f"Fault status must be an HTTP error status, got {self.status}.")

    @property
    def delay(self) -> float:
        """``seconds``, or the kind's default."""
        return self.seconds if self.seconds is not None else _DEFAULT_SECONDS.get(self.kind, 0.0)

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse the ``x-upstream-fault`` header syntax: ``kind[;key=value]...``."""
        kind, *options = (part.strip() for part in text.split(";"))
        values: dict[str, str] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in {"after", "status", "seconds"}:
                raise ValueError(f"Bad fault option {option!r}; use after=, status=, seconds=.")
            values[key] = value
        return cls(
            kind=cast(FaultKind, kind),
            after_tokens=int(values.get("after", 0)),
            status=int(values.get("status", 500)),
            seconds=float(values["seconds"]) if "seconds" in values else None,
        )


@dataclass(eq=False)
class RequestRecord:
    """What the upstream did for one request. Written by the server thread, read by tests.

    ``outcome`` is ``running`` until the request ends, then one of ``completed`` (the whole
    response was sent), ``disconnected`` (the client went away first), ``reset`` (a fault cut
    the connection), ``http_error``, or ``shutdown`` (the upstream stopped mid-request).

    A background response (openai ``background: true``) is generated on when the client goes:
    ``disconnected_ns`` says when it left, and the request ends when generation does,
    ``completed`` (generated to the end, sent or not) or ``cancelled`` (``responses.cancel``).
    """

    id: int
    provider: str
    api: str
    path: str
    model: str
    stream: bool
    max_tokens: int | None  # the limit the request asked for, None if it set none
    input_tokens: int
    planned_tokens: int  # tokens the turn would have had, had it run to the end
    token_interval: float
    started_ns: int
    started_wall_ns: int
    fault: Fault | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    body: dict[str, Any] = field(default_factory=dict, repr=False)
    status: int | None = None  # the HTTP status sent, None if no response was started
    token_times_ns: list[int] = field(default_factory=list, repr=False)
    output_tokens: int | None = None  # output tokens in the final usage frame, if one was sent
    disconnected_ns: int | None = None
    finished_ns: int | None = None
    completed: bool = False
    outcome: str = "running"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def tokens_generated(self) -> int:
        return len(self.token_times_ns)

    def tokens_after(self, t_monotonic_ns: int) -> int:
        """Tokens generated strictly after ``t_monotonic_ns`` (a ``time.monotonic_ns()``)."""
        with self._lock:
            return sum(1 for t in self.token_times_ns if t > t_monotonic_ns)

    def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until the request ended (completed, disconnected, reset, failed); False on
        timeout."""
        return self._done.wait(timeout)

    def wall_ns(self, t_monotonic_ns: int) -> int:
        """The Unix time (ns) of a monotonic instant of this record."""
        return self.started_wall_ns + (t_monotonic_ns - self.started_ns)

    @property
    def disconnected_wall_ns(self) -> int | None:
        return None if self.disconnected_ns is None else self.wall_ns(self.disconnected_ns)

    @property
    def finished_wall_ns(self) -> int | None:
        return None if self.finished_ns is None else self.wall_ns(self.finished_ns)

    def _add_token(self, t_ns: int) -> None:
        with self._lock:
            self.token_times_ns.append(t_ns)

    def _finish(self, outcome: str, *, disconnected_ns: int | None = None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.outcome = outcome
            self.completed = outcome == "completed"
            if disconnected_ns is not None:  # a background response's client left before
                self.disconnected_ns = disconnected_ns
            self.finished_ns = time.monotonic_ns()
        self._done.set()

    def _client_left(self, t_ns: int) -> None:
        """The client of a background response went away; generation goes on."""
        with self._lock:
            if self.disconnected_ns is None:
                self.disconnected_ns = t_ns
