"""Optional features and the extras that bring them (floor: imports only ``exceptions``).

A feature whose packages are missing fails with one line naming the extra to install, never
with an import traceback from deep inside StreamGuard.
"""

from __future__ import annotations

import importlib.util

from streamguard.exceptions import MissingExtraError

__all__ = ["require"]


def require(*modules: str, feature: str, extra: str) -> None:
    """Raise ``MissingExtraError`` naming ``extra`` unless every one of ``modules`` imports.

    Example::

        require("redis", feature="STREAMGUARD_REDIS_URL", extra="redis")
    """
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingExtraError(feature, extra, missing=module)
