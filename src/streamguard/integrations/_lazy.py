"""A patcher that applies when the application imports its framework, not before.

Importing a framework costs seconds (LiteLLM, the Agents SDK): ``instrument()`` only
registers a post-import hook, and the patch applies when (or if) the application imports it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, ClassVar

import wrapt

from streamguard.providers._base import Patcher

__all__ = ["LazyPatcher"]

log = logging.getLogger("streamguard")


class LazyPatcher(Patcher):
    """``module`` is the top-level module whose import applies the patch."""

    module = "framework"
    _applied = False
    # The patcher of each kind that instrument() installed last; a hook registered once per
    # module and kind applies it (hooks cannot be unregistered).
    _current: ClassVar[dict[str, LazyPatcher]] = {}
    _hooked: ClassVar[set[str]] = set()

    def patch(self) -> bool:
        if self.version() is None:
            return False
        LazyPatcher._current[self.name] = self
        if self.name not in LazyPatcher._hooked:
            LazyPatcher._hooked.add(self.name)
            wrapt.register_post_import_hook(_hook(self.name), self.module)
        elif self.module in sys.modules:
            self.apply()
        return True

    def apply(self) -> None:
        if self._applied:
            return
        self._applied = True
        try:
            Patcher.patch(self)
        except Exception as exc:  # the application's import must not fail (G7)
            log.warning("StreamGuard could not patch %s: %r", self.name, exc)

    def unpatch(self) -> None:
        if LazyPatcher._current.get(self.name) is self:
            del LazyPatcher._current[self.name]
        self._applied = False
        super().unpatch()


def _hook(name: str) -> Any:
    def on_import(module: Any) -> None:
        patcher = LazyPatcher._current.get(name)
        if patcher is not None:
            patcher.apply()

    return on_import
