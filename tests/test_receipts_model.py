"""Receipt model: round trips, strict parsing, the JSON form of times, and no floats."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from decimal import Decimal
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from streamguard._engine.reasons import Category, Outcome, StopReason
from streamguard._receipts import (
    GENESIS_HASH,
    SCHEMA,
    HmacSigner,
    Ledger,
    Receipt,
    Signature,
    Times,
    Tokens,
    format_money,
)
from streamguard.exceptions import ReceiptVerificationError
from streamguard.testing.sinks import receipt_fields

_SIGNER = HmacSigner(b"model-test-secret-0123456789abcdef", "k1")


def _sealed(**overrides: Any) -> Receipt:
    return Ledger(_SIGNER, ledger_id="ledger-1").seal(receipt_fields(**overrides))


def test_to_dict_from_dict_round_trip_is_lossless() -> None:
    receipt = _sealed()

    again = Receipt.from_dict(receipt.to_dict())

    assert again == receipt
    assert again.to_dict() == receipt.to_dict()
    assert Receipt.from_dict(json.loads(receipt.to_json())) == receipt


def test_to_dict_is_plain_json_in_design_order_with_times_as_strings() -> None:
    receipt = _sealed(receipt_id="r-1", stream_id="s-1")
    d = receipt.to_dict()

    assert list(d) == [
        "schema", "receipt_id", "stream_id", "ledger_id", "seq", "prev_hash", "provider",
        "model", "operation", "request_max_tokens", "outcome", "reason", "category", "detail",
        "tokens", "cost", "times", "trace_id", "span_id", "attributes", "hash", "signature",
    ]  # fmt: skip
    assert d["schema"] == SCHEMA
    assert (d["seq"], d["prev_hash"]) == (0, GENESIS_HASH)
    assert d["times"] == {
        "started": "1760000000000000000",
        "first_chunk": "1760000000100000000",
        "stop_requested": "1760000000900000000",
        "upstream_closed": "1760000000901000000",
        "finalized": "1760000000902000000",
    }
    assert type(d["attributes"]) is dict
    assert d["signature"] == {
        "alg": "hmac-sha256",
        "key_id": "k1",
        "value": receipt.signature.value,
    }
    assert receipt.times.started == 1_760_000_000_000_000_000  # an int in Python


def test_canonical_bytes_exclude_hash_and_signature_and_hash_to_the_hash_field() -> None:
    receipt = _sealed()
    unsigned = {k: v for k, v in receipt.to_dict().items() if k not in ("hash", "signature")}

    assert receipt.canonical_bytes() == rfc8785.dumps(unsigned)
    assert hashlib.sha256(receipt.canonical_bytes()).hexdigest() == receipt.hash


def test_to_json_is_one_ascii_line_even_with_line_separators_in_values() -> None:
    receipt = _sealed(detail="stopped\u2028by\u0085policy\n\U0001f600", attributes={"k\u2029": "v"})

    text = receipt.to_json()

    assert text.isascii()
    assert len(text.splitlines()) == 1
    assert Receipt.from_dict(json.loads(text)) == receipt


def test_receipt_is_frozen_hashable_and_its_attributes_read_only() -> None:
    receipt = _sealed()

    with pytest.raises(dataclasses.FrozenInstanceError):
        receipt.seq = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        receipt.attributes["tenant"] = "other"  # type: ignore[index]
    assert hash(receipt) == hash(Receipt.from_dict(receipt.to_dict()))
    assert dict(receipt.attributes) == {
        "tenant": "acme",
        "tier": "gold",
        "retry": False,
        "shard": 3,
    }


def test_str_enums_are_stored_as_plain_strings() -> None:
    receipt = _sealed(
        outcome=Outcome.CANCELLED, reason=StopReason.MANUAL, category=Category.OPERATOR
    )

    assert (type(receipt.outcome), type(receipt.reason), type(receipt.category)) == (str, str, str)
    assert receipt.to_dict()["reason"] == "manual"


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"tokens": {**receipt_fields()["tokens"], "produced": 1.0}}, TypeError, "tokens.produced"),
        (
            {"tokens": {**receipt_fields()["tokens"], "consumed": True}},
            TypeError,
            "tokens.consumed",
        ),
        ({"tokens": {**receipt_fields()["tokens"], "produced": 2**53}}, ValueError, "2\\*\\*53"),
        ({"tokens": {**receipt_fields()["tokens"], "post_cutoff": -1}}, ValueError, "post_cutoff"),
        ({"request_max_tokens": 2**60}, ValueError, "request_max_tokens"),
        ({"cost": {**receipt_fields()["cost"], "input": 0.5}}, TypeError, "cost.input"),
        ({"cost": {**receipt_fields()["cost"], "output": "1E-7"}}, ValueError, "fixed-point"),
        ({"attributes": {"ratio": 0.5}}, TypeError, "attributes\\['ratio'\\]"),
        ({"attributes": {"big": 2**53}}, ValueError, "attributes\\['big'\\]"),
        ({"times": {**receipt_fields()["times"], "started": 1.7e18}}, TypeError, "times.started"),
        ({"times": {**receipt_fields()["times"], "finalized": None}}, TypeError, "times.finalized"),
        ({"reason": "bored"}, ValueError, "reason"),
        ({"category": "policy"}, ValueError, "category must be 'client'"),
        ({"outcome": "exploded"}, ValueError, "outcome"),
        ({"trace_id": "XYZ"}, ValueError, "trace_id"),
        ({"receipt_id": ""}, ValueError, "receipt_id"),
        ({"model": 4}, TypeError, "model"),
        ({"model": ""}, ValueError, "model"),
        ({"stream_id": ""}, ValueError, "stream_id"),
        ({"provider": b"openai"}, TypeError, "provider"),
        ({"operation": ""}, ValueError, "operation"),
        ({"request_max_tokens": True}, TypeError, "request_max_tokens"),
        ({"request_max_tokens": -1}, ValueError, "request_max_tokens"),
        ({"detail": 5}, TypeError, "detail"),
        ({"category": None}, ValueError, "category must be 'client'"),
        ({"outcome": 1}, TypeError, "outcome"),
        ({"trace_id": "0AF7651916CD43DD8448EB211C80319C"}, ValueError, "trace_id"),
        ({"trace_id": "0af7651916cd43dd8448eb211c80319"}, ValueError, "trace_id"),
        ({"span_id": "b7ad6b716920333"}, ValueError, "span_id"),
        ({"span_id": 5}, TypeError, "span_id"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(
    overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _sealed(**overrides)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"seq": -1}, ValueError, "seq"),
        ({"seq": True}, TypeError, "seq"),
        ({"seq": 2**53}, ValueError, "seq"),
        ({"prev_hash": "0" * 63}, ValueError, "prev_hash"),
        ({"prev_hash": "A" * 64}, ValueError, "prev_hash"),
        ({"hash": "g" * 64}, ValueError, "hash"),
        ({"hash": None}, TypeError, "hash"),
        ({"ledger_id": ""}, ValueError, "ledger_id"),
        ({"schema": "streamguard.receipt/2"}, ValueError, "schema"),
        ({"signature": {"alg": "hmac-sha256", "key_id": "k"}}, TypeError, "signature"),
        ({"tokens": {"input": 1}}, TypeError, "tokens"),
    ],
)
def test_receipts_built_directly_are_validated_too(
    changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        dataclasses.replace(_sealed(), **changes)


def test_a_str_subclass_in_a_chain_field_is_stored_as_a_plain_str() -> None:
    class Text(str):
        pass

    receipt = dataclasses.replace(_sealed(), ledger_id=Text("ledger-2"), hash=Text("a" * 64))

    assert (type(receipt.ledger_id), type(receipt.hash)) == (str, str)
    assert (receipt.ledger_id, receipt.hash) == ("ledger-2", "a" * 64)


def test_format_money_gives_fixed_point_strings() -> None:
    assert format_money(Decimal("1E-7")) == "0.0000001"
    assert format_money(Decimal("12.50")) == "12.50"
    with pytest.raises(ValueError, match="fixed-point"):
        format_money(Decimal("-1"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("model"), "missing field\\(s\\) model"),
        (lambda d: d.update(extra=1), "unknown field\\(s\\) extra"),
        (lambda d: d["tokens"].pop("committed"), "tokens has missing field\\(s\\) committed"),
        (lambda d: d["signature"].update(note="x"), "signature has unknown field\\(s\\) note"),
        (lambda d: d.update(seq="3"), "seq must be an integer, got string"),
        (
            lambda d: d["times"].update(started=1760000000000000000),
            "times.started must be a string",
        ),
        (lambda d: d["times"].update(first_chunk="017"), "times.first_chunk"),
        (lambda d: d["tokens"].update(input=12.0), "tokens.input must be an integer, got number"),
        (lambda d: d.update(attributes=[]), "attributes must be a mapping, got array"),
        (lambda d: d.update(schema="streamguard.receipt/2"), "schema must be"),
        (lambda d: d["signature"].update(alg="rsa"), "signature.alg"),
        (lambda d: d.update(tokens="lots"), "tokens must be an object, got string"),
    ],
)
def test_from_dict_is_strict_and_names_the_field(mutate: Any, message: str) -> None:
    receipt = _sealed(receipt_id="rid-7")
    d = json.loads(receipt.to_json())
    mutate(d)

    with pytest.raises(ReceiptVerificationError, match=message) as info:
        Receipt.from_dict(d)
    assert info.value.receipt_id == "rid-7"


def test_from_dict_refuses_non_objects() -> None:
    with pytest.raises(ReceiptVerificationError, match="receipt must be an object"):
        Receipt.from_dict([])  # type: ignore[arg-type]


def test_parts_accept_positional_and_keyword_construction() -> None:
    assert Tokens(1, 2, 2, 2, 0, 0, 0, "provider") == Tokens(
        input=1, produced=2, committed=2, consumed=2, undelivered=0, post_cutoff=0,
        prevented_estimate=0, usage_source="provider",
    )  # fmt: skip
    assert Times(1, None, None, None, 2).to_dict()["first_chunk"] is None
    assert Signature("ed25519", "k", "AA==").to_dict() == {
        "alg": "ed25519",
        "key_id": "k",
        "value": "AA==",
    }


def test_span_event_attributes_carry_canonical_json_and_signature() -> None:
    receipt = _sealed()

    attrs = receipt.to_span_event_attributes()

    assert attrs == {
        "streamguard.receipt.id": receipt.receipt_id,
        "streamguard.receipt.seq": 0,
        "streamguard.receipt.hash": receipt.hash,
        "streamguard.receipt.json": receipt.canonical_bytes().decode(),
        "streamguard.receipt.signature.alg": "hmac-sha256",
        "streamguard.receipt.signature.key_id": "k1",
        "streamguard.receipt.signature.value": receipt.signature.value,
    }


_attribute_names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]) | st.sampled_from("\ue000\U0001f600"),
    min_size=1,
    max_size=6,
)
_attribute_values = (
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.booleans()
)


@settings(max_examples=150)
@given(
    attributes=st.dictionaries(_attribute_names, _attribute_values, max_size=6),
    detail=st.none() | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20),
)
def test_receipt_canonical_bytes_equal_rfc8785_for_any_attributes(
    attributes: dict[str, Any], detail: str | None
) -> None:
    receipt = _sealed(attributes=attributes, detail=detail)

    assert receipt.canonical_bytes() == rfc8785.dumps(receipt.unsigned_dict())
    assert hashlib.sha256(rfc8785.dumps(receipt.unsigned_dict())).hexdigest() == receipt.hash
    assert Receipt.from_dict(json.loads(receipt.to_json())) == receipt


# Every string field of a receipt with hostile content: JSON escapes, controls, line
# separators, the last BMP code points, astral characters (surrogate pairs in UTF-16).
_HOSTILE = '"\\/\b\f\n\r\t\x00\x01\x1f\x7f\x80\x85\u00e9\u2028\u2029\ud7ff\ue000\uffff\U0001f600'
_hostile_text = st.text(
    alphabet=st.sampled_from(_HOSTILE) | st.characters(exclude_categories=["Cs"]),
    min_size=1,
    max_size=10,
)
_counts = st.integers(0, 2**53 - 1) | st.sampled_from([0, 1, 2**53 - 1])
_nanos = st.integers(0, 2**64 - 1) | st.sampled_from([0, 2**64 - 1])
_money = st.sampled_from(["0", "0.0000001", "123456789012345678901234567890.5"])


@settings(max_examples=200, deadline=None)
@given(
    text=st.fixed_dictionaries(
        {
            "receipt_id": _hostile_text,
            "stream_id": _hostile_text,
            "provider": _hostile_text,
            "model": st.none() | _hostile_text,
            "operation": _hostile_text,
            "detail": st.none() | _hostile_text | st.just(""),
        }
    ),
    ledger_id=_hostile_text,
    currency=_hostile_text,
    pricing_source=_hostile_text,
    usage_source=st.sampled_from(["provider", "estimated"]),
    counts=st.lists(_counts, min_size=8, max_size=8),
    times=st.lists(_nanos, min_size=5, max_size=5),
    optional=st.lists(st.booleans(), min_size=6, max_size=6),
    money=st.lists(_money, min_size=4, max_size=4),
    attributes=st.dictionaries(_attribute_names, _attribute_values, max_size=6),
)
def test_sealed_bytes_are_the_general_encoders_bytes_for_hostile_values(
    text: dict[str, Any],
    ledger_id: str,
    currency: str,
    pricing_source: str,
    usage_source: str,
    counts: list[int],
    times: list[int],
    optional: list[bool],
    money: list[str],
    attributes: dict[str, Any],
) -> None:
    # The seal encodes by hand (Receipt.canonical_pieces); canonical_bytes() and verify go
    # through the general encoder. Both must give the RFC 8785 bytes, byte for byte.
    fields = receipt_fields(
        **text,
        request_max_tokens=None if optional[0] else counts[7],
        tokens={
            "input": None if optional[1] else counts[0],
            "produced": counts[1],
            "committed": counts[2],
            "consumed": counts[3],
            "undelivered": counts[4],
            "post_cutoff": counts[5],
            "prevented_estimate": counts[6],
            "usage_source": usage_source,
        },
        cost={
            "currency": currency,
            "input": None if optional[2] else money[0],
            "output": money[1],
            "undelivered": None if optional[3] else money[2],
            "prevented_estimate": money[3],
            "pricing_source": pricing_source,
        },
        times={
            "started": times[0],
            "first_chunk": None if optional[4] else times[1],
            "stop_requested": None if optional[5] else times[2],
            "upstream_closed": times[3],
            "finalized": times[4],
        },
        trace_id=None if optional[0] else "0af7651916cd43dd8448eb211c80319c",
        span_id=None if optional[1] else "b7ad6b7169203331",
        attributes=attributes,
    )
    ledger = Ledger(_SIGNER, ledger_id=ledger_id)
    ledger.seal(receipt_fields())  # a seq and prev_hash that are not the draft's placeholders
    receipt, sealed = ledger.seal_bytes(fields)

    assert sealed == receipt.canonical_bytes() == rfc8785.dumps(receipt.unsigned_dict())
    assert hashlib.sha256(sealed).hexdigest() == receipt.hash
    assert _SIGNER.verifier().verify(sealed, receipt.signature)
    pieces = receipt.canonical_pieces()
    if any(max(k) > "\uffff" for k in attributes):
        assert pieces is None  # JCS orders such names by UTF-16 units: the general encoder
    else:
        assert pieces is not None
        head, middle, tail = pieces
        assert head + receipt.prev_hash.encode() + middle + b"1" + tail == sealed


def test_a_lone_surrogate_is_refused_by_the_seal_and_leaves_the_chain_as_it_was() -> None:
    ledger = Ledger(_SIGNER, ledger_id="ledger-1")
    with pytest.raises(ValueError, match="surrogate"):
        ledger.seal(receipt_fields(detail="bad \ud800 text"))
    with pytest.raises(ValueError, match="surrogate"):
        ledger.seal(receipt_fields(attributes={"\udfff": "x"}))
    assert ledger.next_seq == 0
