"""Canonical bytes: RFC 8785 (JSON Canonicalization Scheme) of a JSON value.

Guarantee: ``canonical_bytes(obj) == rfc8785.dumps(obj)`` for every JSON value ``obj`` built
from dicts with string keys, lists/tuples, strings, bools, ``None``, ints and floats; values that
JCS cannot represent (NaN, infinities, ints beyond +-(2**53-1), lone surrogates, non-string keys)
raise ``ValueError``.

Why two paths: ``rfc8785.dumps`` is a pure-Python tree walk that costs ~45 us per receipt, close
to the whole per-receipt budget. The standard library's C encoder produces the same bytes for a
large, well-defined domain, so it is used whenever the input stays inside that domain:

- no floats (JCS formats floats the ECMAScript way; ``json`` uses ``repr``);
- every int within +-(2**53-1) (JCS refuses larger ones; ``json`` would print them);
- no dict key with a character outside the Basic Multilingual Plane. JCS sorts keys by UTF-16
  code units, Python by code points; the two orders agree except between an astral character
  (a surrogate pair, 0xD800-0xDBFF first) and one in U+E000-U+FFFF;
- only exact ``dict``/``list``/``tuple``/``str``/``int``/``bool``/``None`` types, so subclasses
  with their own ``__str__``/``__repr__`` cannot make the two encoders disagree.

String escaping is identical by construction: both escape ``"``, ``\\`` and U+0000-U+001F
(``\\b \\t \\n \\f \\r`` short, the rest as lower-case ``\\u00xx``) and write everything else as
UTF-8. ``tests/test_receipts_canonical.py`` proves the equality with hypothesis.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

__all__ = ["MAX_SAFE_INT", "canonical_bytes"]

MAX_SAFE_INT = 2**53 - 1
"""Largest integer JSON (IEEE 754 doubles) and therefore JCS represents exactly."""

_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical_bytes(obj: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of the JSON value ``obj``.

    >>> canonical_bytes({"b": [1, None, True], "a": "\\u00e9"})
    b'{"a":"\\xc3\\xa9","b":[1,null,true]}'

    Raises ``ValueError`` for values JCS cannot represent (see the module docstring).
    """
    if _fast_path_applies(obj):
        return encode_in_fast_domain(obj)
    return _slow(obj)


def encode_in_fast_domain(obj: Any) -> bytes:
    """``canonical_bytes`` for a value the caller knows is inside the fast-path domain.

    For callers that already validated their values (the receipt model does), to skip the
    tree walk. Outside the domain the result is NOT canonical; use ``canonical_bytes``.
    """
    try:
        return _encode(obj).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: not valid I-JSON text
        raise ValueError("canonical JSON cannot contain lone surrogate characters") from exc


def _slow(obj: Any) -> bytes:
    # Kept as a separate function so tests can observe that the fallback is taken.
    try:
        result: bytes = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"value cannot be canonicalised as RFC 8785 JSON: {exc}") from exc
    return result


def _fast_path_applies(obj: Any) -> bool:
    """True when the stdlib encoder's output is provably the JCS output for ``obj``."""
    # Iterative, with scalars checked inline: this runs for every sealed receipt.
    pending = [obj]
    while pending:
        value = pending.pop()
        t = type(value)
        if t is dict:
            for key, item in value.items():
                if type(key) is not str:
                    return False
                # isascii() is a flag check in C, so the common case costs next to nothing.
                if not key.isascii() and max(key) > "\uffff":
                    return False
                ti = type(item)
                if ti is str or item is None or ti is bool:
                    continue
                if ti is int:
                    if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                        return False
                    continue
                pending.append(item)
        elif t is list or t is tuple:
            pending.extend(value)
        elif t is int:
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
                return False
        elif not (t is str or value is None or t is bool):
            return False
    return True
