"""Receipt v1: the frozen value object, its JSON form and its canonical bytes (DESIGN section 5).

A ``Receipt`` is immutable and validated on construction: a receipt that exists is well formed.
Its canonical bytes are the RFC 8785 (JCS) JSON of every field except ``hash`` and
``signature``; ``hash`` is the SHA-256 (lower-case hex) of those bytes and ``signature`` signs
those same bytes.

Integers in the JSON form
    JCS follows I-JSON: a number is an IEEE 754 double, so only integers within +-(2**53-1) are
    exact. Unix nanosecond times (~1.8e18) are larger, so **the five ``times`` values are decimal
    strings of the integer nanoseconds in the JSON form** (as OTLP/JSON writes uint64 values) and
    ints in Python. Every other integer (token counts, ``seq``, ``request_max_tokens``) must lie
    in 0..2**53-1 and integer attributes within +-(2**53-1); anything else raises ``ValueError``
    when the receipt is built.

No floats
    No field accepts a float. Money is a fixed-point decimal string such as ``"0.000150"``
    (``format_money`` turns a ``Decimal`` into one), so amounts are exact and canonical.

Errors
    Building a receipt with a wrong type raises ``TypeError``, with a wrong value ``ValueError``
    (including a ``category`` that is not the one DESIGN section 4 gives the ``reason``).
    ``Receipt.from_dict`` (meant for untrusted input) raises ``ReceiptVerificationError`` for any
    missing, unknown or wrong-typed field, naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from streamguard._reasons import Outcome, StopReason
from streamguard._receipts import _validate as v
from streamguard._receipts.canonical import MAX_SAFE_INT, canonical_bytes, encode_in_fast_domain
from streamguard.exceptions import ReceiptVerificationError

__all__ = [
    "ALGORITHMS",
    "GENESIS_HASH",
    "SCHEMA",
    "SPAN_EVENT_NAME",
    "Costs",
    "Receipt",
    "Signature",
    "Times",
    "Tokens",
    "format_money",
]

SCHEMA = "streamguard.receipt/1"
GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first receipt (seq 0) of every ledger."""
ALGORITHMS = frozenset({"ed25519", "hmac-sha256"})

SPAN_EVENT_NAME = "streamguard.receipt"
"""Name of the span event (and log ``event_name``) that carries a receipt (DESIGN section 6)."""
ATTR_ID = "streamguard.receipt.id"
ATTR_SEQ = "streamguard.receipt.seq"
ATTR_HASH = "streamguard.receipt.hash"
ATTR_JSON = "streamguard.receipt.json"
ATTR_SIG_ALG = "streamguard.receipt.signature.alg"
ATTR_SIG_KEY_ID = "streamguard.receipt.signature.key_id"
ATTR_SIG_VALUE = "streamguard.receipt.signature.value"

_OUTCOMES = frozenset(o.value for o in Outcome)
_REASON_CATEGORY = {r.value: (None if r.category is None else r.category.value) for r in StopReason}
_USAGE_SOURCES = frozenset({"provider", "estimated"})
_TIME_STRING = re.compile(r"0|[1-9][0-9]{0,19}")


def format_money(amount: Decimal) -> str:
    """Format a non-negative ``Decimal`` as the fixed-point string receipts store.

    >>> format_money(Decimal("1E-7"))
    '0.0000001'
    """
    return v.money("amount", format(amount, "f"))


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counters (DESIGN section 3); ``usage_source`` says whether they are exact."""

    input: int | None
    produced: int
    committed: int
    consumed: int
    undelivered: int
    post_cutoff: int
    prevented_estimate: int
    usage_source: str

    def __post_init__(self) -> None:
        v.optional_count("tokens.input", self.input)
        v.count("tokens.produced", self.produced)
        v.count("tokens.committed", self.committed)
        v.count("tokens.consumed", self.consumed)
        v.count("tokens.undelivered", self.undelivered)
        v.count("tokens.post_cutoff", self.post_cutoff)
        v.count("tokens.prevented_estimate", self.prevented_estimate)
        v.choice_field(self, "usage_source", "tokens.usage_source", _USAGE_SOURCES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "produced": self.produced,
            "committed": self.committed,
            "consumed": self.consumed,
            "undelivered": self.undelivered,
            "post_cutoff": self.post_cutoff,
            "prevented_estimate": self.prevented_estimate,
            "usage_source": self.usage_source,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Costs:
    """Costs as fixed-point decimal strings in ``currency``; ``None`` where no price is known."""

    currency: str = "USD"
    input: str | None
    output: str | None
    undelivered: str | None
    prevented_estimate: str | None
    pricing_source: str

    def __post_init__(self) -> None:
        v.text_field(self, "currency", "cost.currency")
        for name in ("input", "output", "undelivered", "prevented_estimate"):
            value = getattr(self, name)
            if value is not None:
                v.assign(self, name, v.money(f"cost.{name}", value))
        v.text_field(self, "pricing_source", "cost.pricing_source")

    def to_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "input": self.input,
            "output": self.output,
            "undelivered": self.undelivered,
            "prevented_estimate": self.prevented_estimate,
            "pricing_source": self.pricing_source,
        }


@dataclass(frozen=True, slots=True)
class Times:
    """Integer Unix nanoseconds; ``started`` and ``finalized`` are always known."""

    started: int
    first_chunk: int | None
    stop_requested: int | None
    upstream_closed: int | None
    finalized: int

    def __post_init__(self) -> None:
        v.nanos("times.started", self.started)
        for name in ("first_chunk", "stop_requested", "upstream_closed"):
            value = getattr(self, name)
            if value is not None:
                v.nanos(f"times.{name}", value)
        v.nanos("times.finalized", self.finalized)

    def to_dict(self) -> dict[str, Any]:
        # Strings, not numbers: JCS integers stop at 2**53 (see the module docstring).
        return {
            "started": str(self.started),
            "first_chunk": _opt_str(self.first_chunk),
            "stop_requested": _opt_str(self.stop_requested),
            "upstream_closed": _opt_str(self.upstream_closed),
            "finalized": str(self.finalized),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Times:
        """Parse the JSON form, where each time is a decimal string (or ``null`` if optional)."""
        return cls(
            started=_parse_time("started", d["started"]),
            first_chunk=_parse_optional_time("first_chunk", d["first_chunk"]),
            stop_requested=_parse_optional_time("stop_requested", d["stop_requested"]),
            upstream_closed=_parse_optional_time("upstream_closed", d["upstream_closed"]),
            finalized=_parse_time("finalized", d["finalized"]),
        )


@dataclass(frozen=True, slots=True)
class Signature:
    """A signature over the canonical bytes; ``value`` is standard padded base64."""

    alg: str
    key_id: str
    value: str

    def __post_init__(self) -> None:
        v.choice_field(self, "alg", "signature.alg", ALGORITHMS)
        v.text_field(self, "key_id", "signature.key_id")
        v.text_field(self, "value", "signature.value")

    def to_dict(self) -> dict[str, Any]:
        return {"alg": self.alg, "key_id": self.key_id, "value": self.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """One stream's signed, hash-chained receipt. Immutable; validated on construction.

    ``attributes`` is stored read-only (a ``MappingProxyType``); ``to_dict`` returns plain dicts.
    Two receipts are equal when every field is equal. Build receipts with ``Ledger.seal``, which
    fills in ``ledger_id``, ``seq``, ``prev_hash``, ``hash`` and ``signature``.
    """

    schema: str = SCHEMA
    receipt_id: str
    stream_id: str
    ledger_id: str
    seq: int
    prev_hash: str
    provider: str
    model: str | None
    operation: str
    request_max_tokens: int | None = None
    outcome: str
    reason: str
    category: str | None
    detail: str | None = None
    tokens: Tokens
    cost: Costs
    times: Times
    trace_id: str | None = None
    span_id: str | None = None
    attributes: Mapping[str, str | int | bool] = field(default_factory=dict, hash=False)
    hash: str
    signature: Signature

    def __post_init__(self) -> None:
        # Every field already plain and valid (what Ledger.seal builds) is checked in one pass;
        # anything else takes the field-by-field checks, which normalise (str subclasses to
        # str) and raise naming the field.
        if self._plain_and_valid():
            object.__setattr__(self, "attributes", MappingProxyType(v.attributes(self.attributes)))
            return
        if self.schema != SCHEMA:
            raise ValueError(f"schema must be {SCHEMA!r}, got {v.preview(self.schema)}")
        v.assign(self, "schema", SCHEMA)
        v.text_field(self, "receipt_id", "receipt_id")
        v.text_field(self, "stream_id", "stream_id")
        v.text_field(self, "ledger_id", "ledger_id")
        v.text_field(self, "provider", "provider")
        v.text_field(self, "operation", "operation")
        v.count("seq", self.seq)
        v.hex_field(self, "prev_hash", "prev_hash", 64)
        if self.model is not None:
            v.text_field(self, "model", "model")
        v.optional_count("request_max_tokens", self.request_max_tokens)
        v.choice_field(self, "outcome", "outcome", _OUTCOMES)
        reason = v.choice_field(self, "reason", "reason", _REASON_CATEGORY)
        expected = _REASON_CATEGORY[reason]
        if self.category != expected:
            raise ValueError(
                f"category must be {expected!r} for reason {reason!r}, "
                f"got {v.preview(self.category)}"
            )
        v.assign(self, "category", expected)
        if self.detail is not None:
            v.text_field(self, "detail", "detail", empty=True)
        v.instance("tokens", self.tokens, Tokens)
        v.instance("cost", self.cost, Costs)
        v.instance("times", self.times, Times)
        if self.trace_id is not None:
            v.hex_field(self, "trace_id", "trace_id", 32)
        if self.span_id is not None:
            v.hex_field(self, "span_id", "span_id", 16)
        object.__setattr__(self, "attributes", MappingProxyType(v.attributes(self.attributes)))
        v.hex_field(self, "hash", "hash", 64)
        v.instance("signature", self.signature, Signature)

    def _plain_and_valid(self) -> bool:
        """True when ``__post_init__``'s checks would all pass and change nothing but the
        attributes' copy: exact types (``str``, ``int``, the part classes), valid values.
        (Written out inline, no helper calls: it runs for every sealed receipt.)"""
        rid, sid, lid, provider, op = (
            self.receipt_id,
            self.stream_id,
            self.ledger_id,
            self.provider,
            self.operation,
        )
        reason, category, outcome = self.reason, self.category, self.outcome
        model, detail, trace_id, span_id = self.model, self.detail, self.trace_id, self.span_id
        max_tokens, seq = self.request_max_tokens, self.seq
        prev_hash, digest = self.prev_hash, self.hash
        return bool(
            self.schema is SCHEMA
            and type(rid) is str
            and rid != ""
            and type(sid) is str
            and sid != ""
            and type(lid) is str
            and lid != ""
            and type(provider) is str
            and provider != ""
            and type(op) is str
            and op != ""
            and type(seq) is int
            and 0 <= seq <= MAX_SAFE_INT
            and (prev_hash is GENESIS_HASH or (type(prev_hash) is str and _HEX64(prev_hash)))
            and (model is None or (type(model) is str and model != ""))
            and (
                max_tokens is None or (type(max_tokens) is int and 0 <= max_tokens <= MAX_SAFE_INT)
            )
            and type(outcome) is str
            and outcome in _OUTCOMES
            and type(reason) is str
            and reason in _REASON_CATEGORY
            and (
                category is _REASON_CATEGORY[reason]
                or (type(category) is str and category == _REASON_CATEGORY[reason])
            )
            and (detail is None or type(detail) is str)
            and type(self.tokens) is Tokens
            and type(self.cost) is Costs
            and type(self.times) is Times
            and (trace_id is None or (type(trace_id) is str and _HEX32(trace_id)))
            and (span_id is None or (type(span_id) is str and _HEX16(span_id)))
            and (digest is GENESIS_HASH or (type(digest) is str and _HEX64(digest)))
            and type(self.signature) is Signature
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: plain nested dicts, times as decimal strings, DESIGN key order."""
        d = self.unsigned_dict()
        d["hash"] = self.hash
        d["signature"] = self.signature.to_dict()
        return d

    def unsigned_dict(self) -> dict[str, Any]:
        """``to_dict`` without ``hash`` and ``signature``: the value that is canonicalised."""
        # Built by hand rather than with dataclasses.asdict: no deep copies, times as strings,
        # and the attributes proxy turned back into the plain dict JSON encoders expect.
        return {
            "schema": self.schema,
            "receipt_id": self.receipt_id,
            "stream_id": self.stream_id,
            "ledger_id": self.ledger_id,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "provider": self.provider,
            "model": self.model,
            "operation": self.operation,
            "request_max_tokens": self.request_max_tokens,
            "outcome": self.outcome,
            "reason": self.reason,
            "category": self.category,
            "detail": self.detail,
            "tokens": self.tokens.to_dict(),
            "cost": self.cost.to_dict(),
            "times": self.times.to_dict(),
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "attributes": dict(self.attributes),
        }

    def canonical_bytes(self) -> bytes:
        """RFC 8785 bytes of all fields but ``hash`` and ``signature``: what is signed.

        Through the general encoder (``encode_unsigned``), which ``verify`` uses too; sealing
        uses ``canonical_pieces``, and the verifier checks the two agree on every receipt.
        """
        return encode_unsigned(self.unsigned_dict(), self.attributes)

    def canonical_pieces(self) -> tuple[bytes, bytes, bytes] | None:
        """``canonical_bytes`` cut around ``prev_hash`` and ``seq``, for ``Ledger.seal_bytes``.

        ``canonical_bytes() == a + prev_hash.encode() + b + str(seq).encode() + c`` for the
        returned ``(a, b, c)``, so the ledger encodes a draft outside its lock and splices the
        chain fields in. ``None`` when an attribute name holds a character beyond U+FFFF (JCS
        then orders keys differently from Python: use ``canonical_bytes``). Raises
        ``ValueError`` for a lone surrogate, as ``canonical_bytes`` does.

        Written out by hand for speed (a third of the stdlib encoder's time): keys in JCS
        order (plain ASCII names: code point order), every string through the stdlib
        encoder's own escaping function, so the bytes are the stdlib encoder's bytes, which are
        the JCS bytes in this domain (``canonical``). ``tests/test_receipts_model.py`` checks
        them against ``encode_unsigned`` and ``rfc8785`` for hostile values.
        """
        attributes = self.attributes
        if attributes:
            parts = []
            for key in sorted(attributes):
                if not key.isascii() and max(key) > "\uffff":
                    return None
                value = attributes[key]
                if type(value) is str:
                    text = _quote(value)
                elif value is True:
                    text = "true"
                elif value is False:
                    text = "false"
                else:  # validated: an exact int
                    text = int.__repr__(value)
                parts.append(f"{_quote(key)}:{text}")
            attrs = "{" + ",".join(parts) + "}"
        else:
            attrs = "{}"
        c, t, k = self.cost, self.times, self.tokens
        # The values that may be null, written out (no helper call per value).
        q, null = _quote, "null"
        category = null if self.category is None else q(self.category)
        detail = null if self.detail is None else q(self.detail)
        model = null if self.model is None else q(self.model)
        trace_id = null if self.trace_id is None else q(self.trace_id)
        span_id = null if self.span_id is None else q(self.span_id)
        max_tokens = (
            null if self.request_max_tokens is None else int.__repr__(self.request_max_tokens)
        )
        c_input = null if c.input is None else q(c.input)
        c_output = null if c.output is None else q(c.output)
        c_undelivered = null if c.undelivered is None else q(c.undelivered)
        c_prevented = null if c.prevented_estimate is None else q(c.prevented_estimate)
        # Times are JSON strings of their decimal digits: nothing in them needs escaping.
        first_chunk = null if t.first_chunk is None else f'"{t.first_chunk}"'
        stop_requested = null if t.stop_requested is None else f'"{t.stop_requested}"'
        upstream_closed = null if t.upstream_closed is None else f'"{t.upstream_closed}"'
        # Validated counts are exact ints (never bool): f-strings format them as repr does.
        k_input = null if k.input is None else int.__repr__(k.input)
        head = (
            f'{{"attributes":{attrs},"category":{category},'
            f'"cost":{{"currency":{q(c.currency)},"input":{c_input},'
            f'"output":{c_output},"prevented_estimate":{c_prevented},'
            f'"pricing_source":{q(c.pricing_source)},"undelivered":{c_undelivered}}},'
            f'"detail":{detail},"ledger_id":{q(self.ledger_id)},'
            f'"model":{model},"operation":{q(self.operation)},'
            f'"outcome":{q(self.outcome)},"prev_hash":"'
        )
        middle = (
            f'","provider":{q(self.provider)},"reason":{q(self.reason)},'
            f'"receipt_id":{q(self.receipt_id)},"request_max_tokens":{max_tokens},'
            f'"schema":{q(self.schema)},"seq":'
        )
        tail = (
            f',"span_id":{span_id},"stream_id":{q(self.stream_id)},'
            f'"times":{{"finalized":"{t.finalized}","first_chunk":{first_chunk},'
            f'"started":"{t.started}","stop_requested":{stop_requested},'
            f'"upstream_closed":{upstream_closed}}},'
            f'"tokens":{{"committed":{k.committed},"consumed":{k.consumed},'
            f'"input":{k_input},"post_cutoff":{k.post_cutoff},'
            f'"prevented_estimate":{k.prevented_estimate},"produced":{k.produced},'
            f'"undelivered":{k.undelivered},"usage_source":{q(k.usage_source)}}},'
            f'"trace_id":{trace_id}}}'
        )
        try:
            return head.encode("utf-8"), middle.encode("utf-8"), tail.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: not valid I-JSON text
            raise ValueError("canonical JSON cannot contain lone surrogate characters") from exc

    def to_json(self) -> str:
        """One line of JSON including ``hash`` and ``signature`` (the ledger line format).

        ASCII-only on purpose: escaping U+0085/U+2028/U+2029 keeps the receipt on one line for
        every line splitter (``str.splitlines`` breaks on them) and every log pipeline.
        """
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=True)

    def to_span_event_attributes(self) -> dict[str, str | int]:
        """Attributes of the ``streamguard.receipt`` span event that ``verify`` can check.

        The canonical JSON and the signature travel verbatim; id, seq and hash are repeated for
        querying. Telemetry may add counters next to these keys.
        """
        return {
            ATTR_ID: self.receipt_id,
            ATTR_SEQ: self.seq,
            ATTR_HASH: self.hash,
            ATTR_JSON: self.canonical_bytes().decode("utf-8"),
            ATTR_SIG_ALG: self.signature.alg,
            ATTR_SIG_KEY_ID: self.signature.key_id,
            ATTR_SIG_VALUE: self.signature.value,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Receipt:
        """Rebuild a receipt from its ``to_dict`` form, strictly.

        Raises ``ReceiptVerificationError`` naming the field when a field is missing, unknown or
        of the wrong type. It does not check the hash, the signature or the chain (``verify``
        does).
        """
        rid = d.get("receipt_id") if isinstance(d, Mapping) else None
        try:
            v.exact_keys("receipt", d, _FIELDS)
            kwargs = dict(d)
            kwargs["tokens"] = Tokens(**v.exact_keys("tokens", d["tokens"], _TOKENS))
            kwargs["cost"] = Costs(**v.exact_keys("cost", d["cost"], _COSTS))
            kwargs["times"] = Times.from_dict(v.exact_keys("times", d["times"], _TIMES))
            kwargs["signature"] = Signature(**v.exact_keys("signature", d["signature"], _SIG))
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ReceiptVerificationError(
                f"malformed receipt: {exc}", receipt_id=rid if isinstance(rid, str) else None
            ) from None


_FIELDS = tuple(Receipt.__dataclass_fields__)
_TOKENS = tuple(Tokens.__dataclass_fields__)
_COSTS = tuple(Costs.__dataclass_fields__)
_TIMES = tuple(Times.__dataclass_fields__)
_SIG = tuple(Signature.__dataclass_fields__)


_HEX16, _HEX32, _HEX64 = (re.compile(f"[0-9a-f]{{{n}}}").fullmatch for n in (16, 32, 64))


def _opt_str(value: int | None) -> str | None:
    return None if value is None else str(value)


def _parse_time(name: str, value: object) -> int:
    if type(value) is not str or not _TIME_STRING.fullmatch(value):
        raise TypeError(
            f"times.{name} must be a string of decimal integer nanoseconds, got {v.preview(value)}"
        )
    return int(value)


# The stdlib JSON encoder's own string escaping (its C function when built, as the encoder
# itself uses with ensure_ascii=False): quotes, backslash and U+0000-U+001F, nothing else.
_quote = json.encoder.encode_basestring


def _parse_optional_time(name: str, value: object) -> int | None:
    return None if value is None else _parse_time(name, value)


def encode_unsigned(body: dict[str, Any], attributes: Mapping[str, object]) -> bytes:
    """Canonical bytes of a validated receipt's ``unsigned_dict``.

    Validation already excludes floats and out-of-range ints, so only the attribute names can
    leave the stdlib encoder's JCS domain (a character beyond U+FFFF sorts differently).
    """
    if all(key.isascii() or max(key) <= "\uffff" for key in attributes):
        return encode_in_fast_domain(body)
    return canonical_bytes(body)
