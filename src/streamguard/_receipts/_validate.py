"""Validation helpers for the receipt model: strict types, plain values, messages naming the field.

Wrong types raise ``TypeError``, wrong values ``ValueError``; every message names the field.
``str`` subclasses (such as the ``StrEnum`` members of ``streamguard._engine.reasons``) are
normalised to plain ``str`` so JSON encoders, hashing and equality only ever see plain values.
``bool`` is never accepted where an integer is expected.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from streamguard._receipts.canonical import MAX_SAFE_INT

_MONEY = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
_HEX = {n: re.compile(f"[0-9a-f]{{{n}}}") for n in (16, 32, 64)}
_JSON_KIND = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string"}


def preview(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about untrusted input (a
    value read from a file may be megabytes long, or an integer too long to print)."""
    if type(value) is int and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _names(names: list[str]) -> str:
    shown = ", ".join(n if len(n) <= 40 else n[:40] + "..." for n in names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def kind(value: object) -> str:
    """The JSON name of ``value``'s type, for error messages."""
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return _JSON_KIND.get(type(value), type(value).__name__)


def assign(obj: object, name: str, value: object) -> None:
    """Set a field of a frozen dataclass, only when normalisation produced a new object."""
    if getattr(obj, name) is not value:
        object.__setattr__(obj, name, value)


# The *_field helpers validate a dataclass field in place. Their first line is the fast path
# (a plain, valid str), because receipts are sealed on every stream's hot path.


def text_field(obj: object, name: str, label: str, *, empty: bool = False) -> str:
    value = getattr(obj, name)
    if type(value) is str and (value or empty):
        return value
    result = text(label, value, empty=empty)
    object.__setattr__(obj, name, result)
    return result


def choice_field(obj: object, name: str, label: str, allowed: Collection[str]) -> str:
    value = getattr(obj, name)
    if type(value) is str and value in allowed:
        return value
    result = one_of(label, value, allowed)
    object.__setattr__(obj, name, result)
    return result


def hex_field(obj: object, name: str, label: str, length: int) -> None:
    value = getattr(obj, name)
    if type(value) is str and len(value) == length and _HEX[length].fullmatch(value):
        return
    object.__setattr__(obj, name, hex_digits(label, value, length))


def text(name: str, value: object, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {kind(value)}")
    if not value and not empty:
        raise ValueError(f"{name} must not be empty")
    return value if type(value) is str else str.__str__(value)


def one_of(name: str, value: object, allowed: Collection[str]) -> str:
    result = text(name, value)
    if result not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {preview(result)}")
    return result


def count(name: str, value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an integer, got {kind(value)}")
    if not 0 <= value <= MAX_SAFE_INT:
        raise ValueError(f"{name} must be between 0 and 2**53-1, got {preview(value)}")


def optional_count(name: str, value: object) -> None:
    if value is not None:
        count(name, value)


def nanos(name: str, value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be integer Unix nanoseconds, got {kind(value)}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be between 0 and 2**64-1, got {preview(value)}")


def money(name: str, value: object) -> str:
    result = text(name, value)
    if not _MONEY.fullmatch(result):
        raise ValueError(
            f"{name} must be a fixed-point decimal string such as '0.0015', got {preview(result)}"
        )
    return result


def hex_digits(name: str, value: object, length: int) -> str:
    result = text(name, value)
    if not _HEX[length].fullmatch(result):
        raise ValueError(f"{name} must be {length} lower-case hex digits, got {preview(result)}")
    return result


def instance(name: str, value: object, cls: type) -> None:
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {kind(value)}")


def attributes(value: object) -> dict[str, str | int | bool]:
    """A validated plain copy of an attributes mapping (str keys; str, int or bool values)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"attributes must be a mapping, got {kind(value)}")
    out: dict[str, str | int | bool] = {}
    for key, item in value.items():
        if type(key) is not str or not key:  # the common case (a plain str name) calls nothing
            key = text("an attribute name", key)
        if type(item) is str or type(item) is bool:
            out[key] = item
        elif type(item) is int:
            if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                raise ValueError(
                    f"{_attribute(key)} must be within +-(2**53-1), got {preview(item)}"
                )
            out[key] = item
        elif isinstance(item, str):
            out[key] = text(_attribute(key), item, empty=True)
        else:
            raise TypeError(
                f"{_attribute(key)} must be a string, integer or boolean, got {kind(item)}"
            )
    return out


def _attribute(key: str) -> str:
    """How a message names an attribute (built only when there is something to say)."""
    return f"attributes[{preview(key, 40)}]"


def exact_keys(name: str, value: object, fields: Collection[str]) -> Mapping[str, Any]:
    """``value`` as a mapping with exactly ``fields`` as keys (for untrusted JSON)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be an object, got {kind(value)}")
    missing = [f for f in fields if f not in value]
    unknown = sorted(str(k) for k in value if k not in fields)
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing field(s) {_names(missing)}")
        if unknown:
            problems.append(f"unknown field(s) {_names(unknown)}")
        raise ValueError(f"{name} has {' and '.join(problems)}")
    return value
