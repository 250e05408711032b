"""SHA-256 and HMAC-SHA256 that keep the GIL: what sealing a receipt hashes and signs.

Why: ``hmac.digest`` (OpenSSL's one-shot HMAC) releases the GIL for every message, however
short, and ``hashlib`` does for any single buffer of 2048 bytes or more. On the receipt writer's
thread each release is a GIL hand-off to the application's thread and back (a forced switch
and two context switches) to save a few microseconds of hashing: measured, a signature then
took ~1 ms of wall time instead of ~4 us while another thread ran Python code, and the process
paid the switches in CPU. Fed in pieces below 2048 bytes, the same digests are computed with
the GIL held. The bytes hashed, and so every hash and signature, are unchanged.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["HmacSha256", "sha256_hex"]

_PIECE = 2047
"""Largest buffer CPython's hashlib and hmac hash without releasing the GIL (its
``HASHLIB_GIL_MINSIZE`` is 2048)."""


def sha256_hex(data: bytes) -> str:
    """``hashlib.sha256(data).hexdigest()``, computed with the GIL held."""
    if len(data) <= _PIECE:
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    _feed(h.update, data)
    return h.hexdigest()


class HmacSha256:
    """``hmac.digest(key, data, "sha256")`` with the GIL held; the key is set up once."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod="sha256")  # never updated: copied per message

    def digest(self, data: bytes) -> bytes:
        h = self._keyed.copy()
        if len(data) <= _PIECE:
            h.update(data)
        else:
            _feed(h.update, data)
        return h.digest()

    def __repr__(self) -> str:
        return "HmacSha256(...)"  # the key never appears


def _feed(update: object, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), _PIECE):
        update(view[start : start + _PIECE])  # type: ignore[operator]
