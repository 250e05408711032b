"""Canonical bytes: the stdlib fast path is byte-identical to rfc8785 wherever it is taken."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from streamguard._receipts import canonical
from streamguard._receipts.canonical import MAX_SAFE_INT, canonical_bytes

# Characters where JSON encoders are most likely to disagree: quotes, backslash, every C0
# control (short escapes and \u00xx), DEL, C1, line/paragraph separators, the private-use and
# last BMP code points, and astral characters (surrogate pairs in UTF-16).
_TRICKY = '"\\/\b\f\n\r\t\x00\x01\x1f\x7f\x80\x85\u00e9\u2028\u2029\ud7ff\ue000\uffef\uffff'
_ASTRAL = "\U00010000\U0001f600\U0010ffff"

_bmp_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(_TRICKY),
        st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]),
    ),
    max_size=12,
)
_any_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(_TRICKY + _ASTRAL),
        st.characters(exclude_categories=["Cs"]),
    ),
    max_size=12,
)
_safe_ints = st.one_of(
    st.integers(-MAX_SAFE_INT, MAX_SAFE_INT),
    st.sampled_from([0, -1, MAX_SAFE_INT, -MAX_SAFE_INT, 2**31, -(2**31)]),
)
_fast_scalars = st.one_of(st.none(), st.booleans(), _safe_ints, _any_text)


def _trees(scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> Any:
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(keys, children, max_size=5),
        ),
        max_leaves=30,
    )


# The fast-path domain: no floats, safe ints, keys within the BMP (values may be astral).
fast_domain = _trees(_fast_scalars, _bmp_text)

# Everything JCS accepts: adds finite floats, huge ints that must be refused, astral keys.
general_domain = _trees(
    st.one_of(
        _fast_scalars,
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(2**64), max_value=2**64),
    ),
    _any_text,
)


@settings(max_examples=300)
@given(fast_domain)
def test_fast_path_is_taken_and_equals_rfc8785_in_its_domain(obj: Any) -> None:
    assert canonical._fast_path_applies(obj)
    assert canonical_bytes(obj) == rfc8785.dumps(obj)


@settings(max_examples=300)
@given(general_domain)
def test_canonical_bytes_equals_rfc8785_or_both_refuse(obj: Any) -> None:
    try:
        expected = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError:
        with pytest.raises(ValueError, match="canonical"):
            canonical_bytes(obj)
    else:
        assert canonical_bytes(obj) == expected


def test_astral_key_ordering_is_utf16_and_takes_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # U+1F600 is D83D DE00 in UTF-16, which sorts before U+E000; by code point it sorts after.
    obj = {"\ue000": 1, "\U0001f600": 2}
    calls = _spy_on_fallback(monkeypatch)

    result = canonical_bytes(obj)

    assert result == '{"\U0001f600":2,"\ue000":1}'.encode()
    assert (
        result
        != json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert calls == [obj]


@pytest.mark.parametrize(
    "obj",
    [
        {"x": 1.5},
        [0.1],
        {"nested": {"big": 2**53}},
        [-(2**53)],
        {"k\U0001f600": None},
    ],
    ids=["float-value", "float-in-list", "int-above-2**53", "int-below--2**53", "astral-key"],
)
def test_fallback_is_taken_outside_the_fast_domain(
    monkeypatch: pytest.MonkeyPatch, obj: Any
) -> None:
    calls = _spy_on_fallback(monkeypatch)
    with contextlib.suppress(ValueError):  # the fallback refuses out-of-range ints: the point
        canonical_bytes(obj)
    assert calls == [obj]


def test_fast_path_does_not_call_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_on_fallback(monkeypatch)
    assert canonical_bytes({"b": [1, None, True], "a": "\u00e9\U0001f600"}) == (
        '{"a":"\u00e9\U0001f600","b":[1,null,true]}'.encode()
    )
    assert calls == []


def test_floats_are_formatted_the_jcs_way() -> None:
    assert canonical_bytes([1.0, 1e21, 0.000001, 1e-7]) == b"[1,1e+21,0.000001,1e-7]"


@pytest.mark.parametrize(
    "obj",
    [2**53, -(2**53), math.nan, math.inf, {1: "int key"}, "\ud800", {"\udfff": 0}, object()],
    ids=["2**53", "-2**53", "nan", "inf", "int-key", "lone-surrogate", "surrogate-key", "object"],
)
def test_values_jcs_cannot_represent_raise_value_error(obj: Any) -> None:
    with pytest.raises(ValueError, match="canonical"):
        canonical_bytes(obj)


def _spy_on_fallback(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    original = canonical._slow

    def spy(obj: Any) -> bytes:
        calls.append(obj)
        return original(obj)

    monkeypatch.setattr(canonical, "_slow", spy)
    return calls
