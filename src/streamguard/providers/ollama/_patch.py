"""Patch targets of the ollama SDK, its meter, and how its generators are closed.

ollama returns plain generators that send the request on their first ``next()``. Closing a
generator from another thread while it reads raises ("already executing"), so the guard
captures the HTTP response the generator opens (a hook on ``httpx.Client.send``, active only
during that first read) and closes the response itself, from any thread or task.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
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
from streamguard.providers._calls import abort_closer, call_guarded, socket_abort

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
        return max(1, (len(text) + 2) >> 2) if text else NOT_A_UNIT  # estimate_tokens

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
        with contextlib.suppress(ValueError):
            self.generator.close()

    def abort(self) -> None:
        if self.response is not None:
            socket_abort(self.response, self.core)()

    async def aclose(self) -> None:
        if self.response is not None:
            await self.response.aclose()
            return
        # RuntimeError: running in another task before its request went out.
        with contextlib.suppress(RuntimeError):
            await self.generator.aclose()


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


def _request(operation: str) -> Any:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("stream") is not True or in_guarded_call():
            return wrapped(*args, **kwargs)
        options = kwargs.get("options")
        num_predict = None
        if isinstance(options, dict):
            num_predict = options.get("num_predict")
        elif options is not None:
            num_predict = getattr(options, "num_predict", None)
        core = new_core(
            PROVIDER,
            kwargs,
            operation=operation,
            max_tokens=num_predict if isinstance(num_predict, int) and num_predict > 0 else None,
            base_url=getattr(getattr(instance, "_client", None), "base_url", None),
        )
        meter = OllamaMeter(core, chat=operation == "chat")
        core.text_of = meter.text

        def guard(generator: Any) -> Any:
            box = _Capture(generator, core)
            capture = _FirstReadCapture(box)
            guard: Any
            if hasattr(generator, "__anext__"):
                core.bind_upstream(aclose=box.aclose, abort=box.abort)
                guard = AsyncStreamGuard(generator, core, meter, capture)
            else:
                core.bind_upstream(close=box.close)
                guard = SyncStreamGuard(generator, core, meter, capture)
            capture.driver = weakref.ref(guard._self_driver)
            return guard

        return call_guarded(wrapped, args, kwargs, core, guard)

    return wrapper


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
    supported = ("0.4", "0.7")

    def __init__(self) -> None:
        super().__init__()
        self._module_functions: dict[str, Any] = {}

    def targets(self) -> list[tuple[str, str, Any]]:
        return [
            (_MODULE, "Client.chat", _request("chat")),
            (_MODULE, "Client.generate", _request("text_completion")),
            (_MODULE, "AsyncClient.chat", _request("chat")),
            (_MODULE, "AsyncClient.generate", _request("text_completion")),
            ("httpx", "Client.send", _send),
            ("httpx", "AsyncClient.send", _async_send),
        ]

    def after_patch(self) -> None:
        # ``ollama.chat`` and ``ollama.generate`` were bound to a default client at import,
        # before the class was patched: bind them again (PROVIDERS.md).
        import ollama

        default = getattr(ollama, "_client", None)
        if default is None:
            return
        for name in ("chat", "generate"):
            self._module_functions[name] = getattr(ollama, name)
            setattr(ollama, name, getattr(default, name))

    def unpatch(self) -> None:
        import ollama

        for name, original in self._module_functions.items():
            setattr(ollama, name, original)
        self._module_functions.clear()
        super().unpatch()
