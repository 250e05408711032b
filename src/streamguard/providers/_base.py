"""What every provider shares: patching with wrapt, the stream proxies, request bookkeeping.

A provider subpackage only says what is specific to its SDK: the patch targets, how to read a
chunk (its meter), where usage is, and how to close. Lifecycle, accounting and receipts live
in the engine, once.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import wrapt

from streamguard._engine.core import StreamCore
from streamguard._engine.drivers import Meter
from streamguard._engine.handle import StreamHandle
from streamguard._engine.holdback import async_driver, sync_driver
from streamguard._engine.reasons import StopReason
from streamguard._runtime import Runtime, get_runtime

__all__ = [
    "AsyncStreamGuard",
    "Layers",
    "ObjectProxy",
    "Patcher",
    "SyncStreamGuard",
    "core_of",
    "discard_core",
    "handle_of",
    "in_guarded_call",
    "new_core",
]

log = logging.getLogger("streamguard")

# The base of every guard. wrapt 2's stubs make ObjectProxy generic, but wrapt 1.x (the supported
# range starts at 1.16; opentelemetry-instrumentation 0.60b1, which mistralai 2.0 pulls in,
# requires wrapt<2) cannot subscript it at runtime: the parameter exists for the type checker only.
if TYPE_CHECKING:
    ObjectProxy = wrapt.ObjectProxy[Any]
else:
    ObjectProxy = wrapt.ObjectProxy

# Set while a guarded call runs, so that an SDK method calling another patched one (openai's
# ``.stream()`` calling ``create``, mistral's ``parse_stream``) gives one stream one receipt.
_in_call: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "streamguard_in_call", default=False
)


def in_guarded_call() -> bool:
    return _in_call.get()


class guarded_call:
    """Marks the current context as inside a guarded SDK call (re-entrancy guard)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _in_call.set(True)

    def __exit__(self, *exc: object) -> None:
        _in_call.reset(self._token)


def new_core(
    provider: str,
    kwargs: Mapping[str, Any],
    *,
    operation: str = "chat",
    model: str | None = None,
    max_tokens: int | None = None,
    base_url: object = None,
) -> StreamCore:
    """A core for one request, started before the request is sent."""
    host, port = _server(base_url)
    runtime = get_runtime()
    core = StreamCore(
        runtime,
        provider=provider,
        model=model if model is not None else _str(kwargs.get("model")),
        operation=operation,
        request_max_tokens=max_tokens,
        server_address=host,
        server_port=port,
    )
    runtime.begin(core, kwargs)  # may raise BudgetExceeded: then no request is sent
    return core


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _server(base_url: object) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port`` of a client's base URL, parsed once per URL (a
    process has a few clients; each stream would otherwise parse its client's URL again)."""
    if base_url is None:
        return None, None
    url = str(base_url)
    found = _servers.get(url)
    if found is None:
        try:
            parts = urlsplit(url)
            found = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            found = None, None
        if len(_servers) >= 256:  # base URLs are the application's: bound what is kept
            _servers.clear()
        _servers[url] = found
    return found


_servers: dict[str, tuple[str | None, int | None]] = {}


def fail_core(core: StreamCore, exc: BaseException) -> None:
    """The request failed before a stream existed: the receipt says ``failed``."""
    if isinstance(exc, Exception):
        core.request_stop(
            StopReason.UPSTREAM_ERROR, f"{type(exc).__name__}: {exc}"[:300], error=exc
        )
    else:
        core.request_stop(
            StopReason.CONSUMER_CANCELLED, f"{type(exc).__name__} before the first chunk"
        )


class SyncStreamGuard(ObjectProxy):
    """A guard around a sync SDK stream: the SDK object in every respect but its lifecycle.

    ``isinstance`` checks, attributes and helpers see the SDK's object; iteration, ``close``,
    ``with`` and garbage collection go through the guard, which closes the upstream exactly
    once whichever way the stream ends.
    """

    def __init__(
        self,
        wrapped: Any,
        core: StreamCore,
        meter: Meter | None,
        iterator: Iterator[Any] | None = None,
    ) -> None:
        super().__init__(wrapped)
        self._self_core = core
        self._self_driver = sync_driver(
            core, iterator if iterator is not None else iter(wrapped), meter
        )
        core.runtime.watch(core)

    # wrapt forwards __iter__ to the wrapped object, which would bypass the guard: a proxy
    # must define the iteration protocol itself (PROVIDERS.md pitfall 3).
    def __iter__(self) -> SyncStreamGuard:
        return self

    def __next__(self) -> Any:
        return self._self_driver.next()

    def close(self) -> None:
        """Always closes the upstream; a second call is a no-op."""
        self._self_driver.close()

    def __enter__(self) -> SyncStreamGuard:
        # Without this, ``with proxy as s`` would hand out the raw object (pitfall 2).
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._self_driver.close()

    def __del__(self) -> None:
        core = self._self_core
        if core.stop_reason is None:
            core.request_stop(StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended")

    @property
    def streamguard(self) -> StreamHandle:
        """The StreamGuard handle: ``stream_id``, ``stats``, ``cancel()``, ``receipt``."""
        return StreamHandle(self._self_core)

    def __copy__(self) -> Any:
        raise TypeError("A guarded stream cannot be copied: it owns one upstream connection.")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("A guarded stream cannot be pickled: it owns one upstream connection.")


class AsyncStreamGuard(ObjectProxy):
    """A guard around an async SDK stream; see ``SyncStreamGuard``.

    ``close()`` is a coroutine, as on the SDKs' async streams; ``aclose()`` is its alias.
    """

    def __init__(
        self, wrapped: Any, core: StreamCore, meter: Meter | None, iterator: Any = None
    ) -> None:
        super().__init__(wrapped)
        self._self_core = core
        self._self_driver = async_driver(
            core, iterator if iterator is not None else wrapped.__aiter__(), meter
        )
        core.runtime.watch(core)

    # See SyncStreamGuard.__iter__: the proxy must own the async iteration protocol.
    def __aiter__(self) -> AsyncStreamGuard:
        return self

    def __anext__(self) -> Any:
        # The driver's coroutine itself, not one wrapping it: one frame less per chunk.
        return self._self_driver.next()

    async def close(self) -> None:
        """Always closes the upstream, even when cancelled; a second call is a no-op."""
        await self._self_driver.aclose()

    async def aclose(self) -> None:
        await self._self_driver.aclose()

    async def __aenter__(self) -> AsyncStreamGuard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._self_driver.aclose()

    def __del__(self) -> None:
        core = self._self_core
        if core.stop_reason is None:
            core.request_stop(StopReason.CONSUMER_CLOSED, "the stream was dropped before it ended")

    @property
    def streamguard(self) -> StreamHandle:
        return StreamHandle(self._self_core)

    def __copy__(self) -> Any:
        raise TypeError("A guarded stream cannot be copied: it owns one upstream connection.")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("A guarded stream cannot be pickled: it owns one upstream connection.")


def core_of(stream: object) -> StreamCore | None:
    """The core of a guarded stream: a proxy guard (``_self_core``), a stream guarded in place
    (its driver in ``_streamguard``), or either under other instrumentation's wrappers (attribute
    forwarding, or a ``__wrapped__`` chain)."""
    for _ in range(8):
        core = getattr(stream, "_self_core", None)
        if isinstance(core, StreamCore):
            return core
        core = getattr(getattr(stream, "_streamguard", None), "core", None)
        if isinstance(core, StreamCore):
            return core
        stream = getattr(stream, "__wrapped__", None)
        if stream is None:
            return None
    return None


def handle_of(stream: object) -> StreamHandle | None:
    """The StreamGuard handle of a guarded stream, or None if it is not guarded."""
    core = core_of(stream)
    return StreamHandle(core) if core is not None else None


def discard_core(core: StreamCore, why: str) -> None:
    """The request produced no stream StreamGuard can guard: see ``Runtime.discard``."""
    cast(Runtime, core.runtime).discard(core, why)  # providers stand on the runtime: its host


Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
_MISSING: Any = object()


class Layers:
    """StreamGuard's own layers on SDK attributes, each removable on its own.

    Other instrumentation (OpenLLMetry, OTel's openai-v2) may wrap the same attribute before or
    after StreamGuard. Removing a layer never restores a saved value over someone else's: when
    another wrapper now sits outside StreamGuard's, StreamGuard's layer is found in that
    wrapper's ``__wrapped__`` chain and spliced out, so the other layer keeps working.
    """

    def __init__(self) -> None:
        self._layers: list[tuple[Any, str, Any, Any]] = []  # owner, attr, ours, what it replaced

    def wrap(self, owner: Any, attr: str, wrapper: Wrapper) -> None:
        """A wrapt function wrapper (``wrapper(wrapped, instance, args, kwargs)``)."""
        original = vars(owner)[attr]
        ours = wrapt.FunctionWrapper(original, wrapper)
        setattr(owner, attr, ours)
        self._layers.append((owner, attr, ours, original))

    def replace(self, owner: Any, attr: str, value: Any) -> None:
        """A plain attribute (hot paths: a function called per chunk, no wrapper frames)."""
        original = vars(owner).get(attr, _MISSING)
        setattr(owner, attr, value)
        self._layers.append((owner, attr, value, original))

    def remove_all(self) -> None:
        while self._layers:
            owner, attr, ours, original = self._layers.pop()
            try:
                _remove_layer(owner, attr, ours, original)
            except Exception as exc:  # one attribute must not keep the others patched
                log.warning("StreamGuard could not remove its patch of %s.%s: %r", owner, attr, exc)


def _remove_layer(owner: Any, attr: str, ours: Any, original: Any) -> None:
    current = vars(owner).get(attr, _MISSING)
    if current is ours:
        if original is _MISSING:
            delattr(owner, attr)
        else:
            setattr(owner, attr, original)
        return
    layer = current
    for _ in range(64):
        inner = getattr(layer, "__wrapped__", _MISSING)
        if inner is _MISSING:
            break
        if inner is ours:
            if original is _MISSING:
                original = getattr(ours, "__wrapped__", None)
            layer.__wrapped__ = original
            return
        layer = inner
    # Someone else already removed (or replaced) StreamGuard's layer: nothing of ours is left.
    log.debug("StreamGuard's patch of %s.%s was already gone", owner, attr)


class Patcher:
    """Patches one SDK's entry points with wrapt and restores them exactly.

    ``targets`` are (module, "Class.method", wrapper) triples. ``patch()`` returns False,
    changing nothing, when the SDK is not installed; an SDK outside ``supported`` is refused
    with a warning that says which versions are.
    """

    name = "sdk"
    distribution = "sdk"
    #: The SDK's top-level package: ``instrument()`` patches when the application imports it.
    module = ""
    supported: tuple[str, str] = ("0", "999")  # [min, max) as version strings

    def targets(self) -> list[tuple[str, str, Wrapper]]:
        raise NotImplementedError

    def __init__(self) -> None:
        self.layers = Layers()

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def patch(self) -> bool:
        version = self.version()
        if version is None:
            return False
        if not _in_range(version, self.supported):
            log.warning(
                "StreamGuard does not guard %s %s: supported versions are >=%s,<%s. Its streams "
                "are NOT guarded; install a supported version.",
                self.distribution,
                version,
                *self.supported,
            )
            return False
        for module_name, path, wrapper in self.targets():
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            owner_name, _, attr = path.rpartition(".")
            owner = _resolve(module, owner_name) if owner_name else module
            if owner is None or attr not in vars(owner):
                continue
            self.layers.wrap(owner, attr, wrapper)
        self.after_patch()
        return True

    def after_patch(self) -> None:
        """Extra patches that are not plain method wrappers (module-level bindings)."""

    def unpatch(self) -> None:
        """Remove StreamGuard's layers only; other instrumentation's wrappers stay."""
        self.layers.remove_all()


def _resolve(module: Any, dotted: str) -> Any:
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _in_range(version: str, bounds: tuple[str, str]) -> bool:
    def key(v: str) -> tuple[int, ...]:
        out = []
        for piece in v.split(".")[:3]:
            digits = "".join(ch for ch in piece if ch.isdigit())
            out.append(int(digits or 0))
        return tuple(out)

    return key(bounds[0]) <= key(version) < key(bounds[1])
