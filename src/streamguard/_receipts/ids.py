"""Receipt ids: 128 random bits as 32 hex digits, drawn without a system call per id.

``os.urandom`` is a ``getrandom`` system call that releases the GIL: on the receipt writer's
thread, once per receipt, it hands the GIL to the application's thread and then waits to take
it back. Ids come from a private generator instead, seeded from ``os.urandom`` (256 bits) when
this module is imported and again in every forked child, so a parent and its children never
share a sequence. The generator is StreamGuard's own: an application's ``random.seed(...)``
does not make its receipt ids repeat. An id names a receipt; it is not a secret (the
signature, not the id, proves a receipt genuine).

Floor: ``_receipts``.
"""

from __future__ import annotations

import os
import random

__all__ = ["new_id"]

_source = random.Random(os.urandom(32))
_bits = _source.getrandbits  # one C call, atomic under the GIL: safe from any thread


def _reseed() -> None:
    _source.seed(os.urandom(32))


if hasattr(os, "register_at_fork"):  # POSIX: a child must not repeat its parent's ids
    os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """32 lowercase hex digits (128 random bits), as ``os.urandom(16).hex()`` gives.

    >>> len(new_id()), new_id() != new_id()
    (32, True)
    """
    return f"{_bits(128):032x}"
