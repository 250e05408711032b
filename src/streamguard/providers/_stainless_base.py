"""What the Stainless choke points share: the pending ``Request``, the SDK description, the
attribute names a guarded stream carries, and the request-body helpers.

Floor: ``providers``. Imported by ``_stainless`` (the request hook and the class-level
patches) and ``_stainless_stream`` (the in-place guard); it imports neither.
"""

from __future__ import annotations

import contextvars
import copy
import json
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from streamguard._engine.core import StreamCore
from streamguard._engine.drivers import Meter
from streamguard.providers._base import new_core

__all__ = ["ATTR", "AfterClose", "Request", "StainlessSdk", "request_body", "with_body"]

#: The instance attribute holding a stream's driver (None on the class: not guarded).
ATTR = "_streamguard"
_HOLD = "_streamguard_hold"


class Request:
    """One streaming request, from before it is sent until a stream claims it."""

    __slots__ = ("__weakref__", "after_close", "claimed", "core", "done", "meter", "stream")

    def __init__(self, core: StreamCore, meter: Callable[[StreamCore], Meter]) -> None:
        self.core = core
        self.meter = meter  # the meter factory for this request's chunks
        self.claimed = False
        self.done = False  # the request call returned: a stale context copy must not claim it
        self.stream: weakref.ref[Any] | None = None  # the stream that holds the guard
        # What the provider does once the socket is shut, before the SDK's close and the
        # receipt (openai: cancel a background response): ``sync(core)``/``await aio(core)``.
        self.after_close: AfterClose | None = None


class AfterClose:
    """A provider's step after the guard shut a stream's socket (``Request.after_close``).
    It must not raise: the stream is stopped either way."""

    def sync(self, core: StreamCore) -> None:
        """After a sync stream's socket is shut."""

    async def aio(self, core: StreamCore) -> None:
        """After an async stream's socket is shut, on the stream's event loop."""


_pending: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "streamguard_pending_request", default=None
)
# The Request of each HTTP response: a raw response's (with_raw_response /
# with_streaming_response) until ``parse()`` builds its stream, and a stream's, so that a
# second stream built on the same response (anthropic 0.x's MessageStream does that) takes the
# guard over instead of getting a second one. Both key and value are weak: the value reaches
# back to the key (the core's stop exception's traceback holds the stream's frames, and the
# stream its response), so a strong value would keep every stopped stream alive for good. The
# Request lives as long as what needs it: its stream (``_Hold.request``) or, before ``parse()``,
# the raw response (its finaliser).
_by_response: weakref.WeakKeyDictionary[Any, weakref.ref[Request]] = weakref.WeakKeyDictionary()


def _request_of(response: Any) -> Request | None:
    ref = _by_response.get(response) if response is not None else None
    return ref() if ref is not None else None


class StainlessSdk:
    """What differs between the Stainless SDKs; the provider subpackage fills it in."""

    provider = "sdk"

    def prepare(self, url: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The body to send (a new dict when changed) and whether StreamGuard changed it so that
        the stream carries a chunk the application must not see."""
        return body, False

    def endpoint(self, url: str, hidden: bool) -> tuple[str, Callable[[StreamCore], Meter]]:
        """The operation and the meter factory of a streaming request to ``url``."""
        raise NotImplementedError

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_tokens")
        return value if isinstance(value, int) else None

    def start(self, client: Any, options: Any) -> tuple[Any, Request]:
        """For a streaming request: the options to send and its Request. May raise
        BudgetExceeded, and then nothing is sent."""
        body = request_body(options)
        url = _path(getattr(options, "url", ""))
        new_body, hidden = self.prepare(url, body)
        if new_body is not body:
            options = with_body(options, new_body)
        return options, self._request(url, new_body, client, hidden)

    def adopt(self, stream: Any) -> Request:
        """A Request for a stream built from a response whose request StreamGuard did not see
        (a stream constructed by hand): what the request said, read back from the response."""
        body: dict[str, Any] = {}
        url = ""
        try:
            request = stream.response.request
            url = _path(request.url)
            parsed = json.loads(request.content or b"{}")
            body = parsed if isinstance(parsed, dict) else {}
        except (RuntimeError, AttributeError, ValueError):  # a response with no request
            pass
        return self._request(url, body, getattr(stream, "_client", None), False)

    def _request(self, url: str, body: dict[str, Any], client: Any, hidden: bool) -> Request:
        operation, meter = self.endpoint(url, hidden)
        core = new_core(
            self.provider,
            body,
            operation=operation,
            max_tokens=self.max_tokens(body),
            base_url=getattr(client, "base_url", None),
        )
        return Request(core, meter)


def _path(url: object) -> str:
    return urlsplit(str(url)).path


def request_body(options: Any) -> dict[str, Any]:
    body = getattr(options, "json_data", None)
    return body if isinstance(body, dict) else {}


def with_body(options: Any, body: dict[str, Any]) -> Any:
    """A copy of the request options with a new JSON body (the caller's objects untouched)."""
    new = copy.copy(options)
    new.json_data = body
    return new
