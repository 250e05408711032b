"""Patch targets of the ollama SDK, its meter, and how its generators are closed.

Every request of the ollama clients goes through ``Client._request`` / ``AsyncClient._request``
(``chat``, ``generate``, the module-level ``ollama.chat`` bound to a default client, and any
caller of the private method): StreamGuard guards the streaming chat and generate requests
there, the choke point. Nothing else is patched on the clients, so other instrumentation of
``chat``/``generate`` stays outside StreamGuard's layer whatever the order, and an
uninstrument that removes wrappers of ``chat`` (OpenLLMetry's ollama instrumentation does,
wrappers it never installed) cannot remove StreamGuard's.

ollama returns plain generators that send the request on their first ``next()``. Closing a
generator from another thread while it reads raises ("already executing"), so the guard
captures the HTTP response the generator opens (a hook on ``httpx.Client.send``, active only
during that first read) and closes the response itself, from any thread or task.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Mapping
from typing import Any

from streamguard._engine.core import NOT_A_UNIT, StreamCore
from streamguard._money.estimate import estimate_tokens
from streamguard.providers._base import (
    AsyncStreamGuard,
    Patcher,
    SyncStreamGuard,
    in_guarded_call,
    new_core,
)
from streamguard.providers._calls import (
    abort_closer,
    call_guarded,
    guard_found,
    is_async_iterator,
    is_iterator,
    socket_abort,
)

__all__ = ["OllamaMeter", "OllamaPatcher"]

PROVIDER = "ollama"
_MODULE = "ollama._client"

# The capture box of the stream whose first read is in progress (never the guard itself).
_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "streamguard_ollama_capture", default=None
)


class OllamaMeter:
    """Chat (``message.content``) and generate (``response``) parts; the ``done`` part has
    ``prompt_eval_count`` and ``eval_count``."""

    __slots__ = ("chat", "core")

    def __init__(self, core: StreamCore, chat: bool = True) -> None:
        self.core = core
        self.chat = chat

    def __call__(self, part: Any) -> int:
        if part.done:
            core = self.core
            core.response_model = part.model
            if part.done_reason:
                core.finish_reasons.append(part.done_reason)
            core.set_usage(input_tokens=part.prompt_eval_count, output_tokens=part.eval_count)
        message = self.chat and part.message
        if message:
            text = message.content
            if message.tool_calls:
                return max(1, estimate_tokens(text))
        else:
            text = part.response if not self.chat else None
        return ((len(text) + 2) >> 2 or 1) if text else NOT_A_UNIT  # estimate_tokens, inlined

    @staticmethod
    def text(part: Any) -> str | None:
        message = getattr(part, "message", None)
        return message.content if message is not None else getattr(part, "response", None)


class _Capture:
    """Holds the generator and, once its request is sent, the HTTP response; closes either."""

    __slots__ = ("core", "generator", "response")

    def __init__(self, generator: Any, core: StreamCore) -> None:
        self.generator = generator
        self.core = core
        self.response: Any = None

    def close(self) -> None:
        if self.response is not None:
            abort_closer(self.response, self.core)()
            return
        # ValueError: executing in another thread before its request went out.
        close = getattr(self.generator, "close", None)  # another layer's iterator may have none
        if close is not None:
            with contextlib.suppress(ValueError):
                close()

    def abort(self) -> None:
        if self.response is not None:
            socket_abort(self.response, self.core)()

    async def aclose(self) -> None:
        if self.response is not None:
            await self.response.aclose()
            return
        # RuntimeError: running in another task before its request went out.
        aclose = getattr(self.generator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):
                await aclose()


class _FirstReadCapture:
    """Iterates the generator, capturing its HTTP response during the first read."""

    __slots__ = ("box", "driver", "first")

    def __init__(self, box: _Capture) -> None:
        self.box = box
        self.first = True
        self.driver: Any = None  # weakref to the driver, which reads the generator directly
        # after the first read (one call less per chunk)

    def __iter__(self) -> _FirstReadCapture:
        return self

    def __next__(self) -> Any:
        if self.first:
            self.first = False
            token = _capture.set(self.box)
            try:
                return next(self.box.generator)
            finally:
                _capture.reset(token)
                self._hand_over()
        return next(self.box.generator)

    def _hand_over(self) -> None:
        driver = self.driver() if self.driver is not None else None
        if driver is not None:
            if hasattr(driver, "_ait"):
                driver._ait = self.box.generator
            else:
                driver._it = self.box.generator

    def __aiter__(self) -> _FirstReadCapture:
        return self

    async def __anext__(self) -> Any:
        if self.first:
            self.first = False
            token = _capture.set(self.box)
            try:
                return await self.box.generator.__anext__()
            finally:
                _capture.reset(token)
                self._hand_over()
        return await self.box.generator.__anext__()


# The streaming requests StreamGuard guards: URL path -> operation.
_OPERATIONS = {"/api/chat": "chat", "/api/generate": "text_completion"}


def _operation(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    # _request(cls, method, url, json=..., stream=...): the URL is the third argument.
    url = args[2] if len(args) > 2 else kwargs.get("url")
    return _OPERATIONS.get(url) if isinstance(url, str) else None


def _num_predict(body: Mapping[str, Any]) -> int | None:
    options = body.get("options")
    if isinstance(options, Mapping):
        value = options.get("num_predict")
    else:
        value = getattr(options, "num_predict", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs.get("stream") is not True or in_guarded_call():
        return wrapped(*args, **kwargs)
    operation = _operation(args, kwargs)
    if operation is None:  # pull, push, create: progress streams, not model output
        return wrapped(*args, **kwargs)
    body = kwargs.get("json")
    body = body if isinstance(body, Mapping) else {}
    core = new_core(
        PROVIDER,
        body,
        operation=operation,
        max_tokens=_num_predict(body),
        base_url=getattr(getattr(instance, "_client", None), "base_url", None),
    )
    meter = OllamaMeter(core, chat=operation == "chat")
    core.text_of = meter.text

    def guard(generator: Any) -> Any:
        box = _Capture(generator, core)
        capture = _FirstReadCapture(box)
        guard: Any
        if is_async_iterator(generator):
            core.bind_upstream(aclose=box.aclose, abort=box.abort)
            guard = AsyncStreamGuard(generator, core, meter, capture)
        else:
            core.bind_upstream(close=box.close)
            guard = SyncStreamGuard(generator, core, meter, capture)
        capture.driver = weakref.ref(guard._self_driver)
        return guard

    # Any iterator reading the SDK's generator can be guarded: the guard closes the HTTP
    # response the first read opens, whoever's iterator does that read.
    def guard_result(result: Any) -> Any:
        return guard_found(result, core, is_iterator, guard)

    return call_guarded(wrapped, args, kwargs, core, guard_result)


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    box = _capture.get()
    response = wrapped(*args, **kwargs)
    if box is not None and box.response is None:
        box.response = response
    return response


def _async_send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    box = _capture.get()
    if box is None:
        return wrapped(*args, **kwargs)
    return _capture_async(wrapped(*args, **kwargs), box)


async def _capture_async(sending: Any, box: _Capture) -> Any:
    response = await sending
    if box.response is None:
        box.response = response
    return response


class OllamaPatcher(Patcher):
    name = "ollama"
    distribution = "ollama"
    module = "ollama"
    # 0.4.0 (on httpx 0.27) and the newest 0.6.x are both tested: `make compat` and `make test`.
    # Both route chat and generate through ``_request(cls, method, url, json=, stream=)``.
    supported = ("0.4", "0.7")

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            (_MODULE, "Client._request", _request),
            (_MODULE, "AsyncClient._request", _request),
            ("httpx", "Client.send", _send),
            ("httpx", "AsyncClient.send", _async_send),
        ]
