"""Find receipts in exported JSON lines: the ledger, log backends, span exports, OTLP/JSON.

One line of input may hold:

(a) a receipt object, as the JSON-lines ledger writes it (``Receipt.to_json``);
(b) a log record with the receipt under ``body`` (a JSON object, a JSON string, or an OTLP
    ``AnyValue`` such as ``{"kvlistValue": ...}``), or under ``line`` as ``logcli --output
    jsonl`` writes Loki lines;
(c) a span event whose ``attributes`` (a dict or an OTLP key/value list) carry the canonical
    JSON under ``streamguard.receipt.json`` and the signature under
    ``streamguard.receipt.signature.{alg,key_id,value}``; or a span with such ``events``;
(d) an OTLP/JSON export (``resourceLogs`` or ``resourceSpans``, as the Collector's file
    exporter writes it): every receipt log record and receipt span event inside it.

``receipts_in_line`` returns the receipt dicts found, in ``Receipt.to_dict`` shape, or raises
``NotAReceipt`` saying why the line holds none. The line is untrusted: a number of more digits
than Python converts (``sys.get_int_max_str_digits()``), JSON nested deeper than the parser's
recursion limit, and values of unexpected types all end in ``NotAReceipt`` or
``json.JSONDecodeError``, never in another exception.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from typing import Any

from streamguard._receipts.canonical import canonical_bytes
from streamguard._receipts.model import (
    ATTR_HASH,
    ATTR_JSON,
    ATTR_SIG_ALG,
    ATTR_SIG_KEY_ID,
    ATTR_SIG_VALUE,
    SCHEMA,
    SPAN_EVENT_NAME,
)

__all__ = ["NotAReceipt", "receipts_in_line"]


_OTLP_KEYS = frozenset({"resourceLogs", "resourceSpans", "resource_logs", "resource_spans"})


class NotAReceipt(ValueError):
    """The line is JSON but holds no receipt in any of the accepted shapes."""


def receipts_in_line(text: str) -> list[dict[str, Any]]:
    """Receipt dicts in one line of JSON (see the module docstring for the shapes).

    Raises ``json.JSONDecodeError`` (a ``ValueError``) for text that is not JSON and
    ``NotAReceipt`` for JSON that holds no receipt (or that cannot be read safely).
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:
        # json raises a plain ValueError for an integer literal over the conversion limit.
        raise NotAReceipt(
            f"the line holds a number of more than {sys.get_int_max_str_digits()} digits, "
            "which no receipt has"
        ) from None
    except RecursionError:
        raise NotAReceipt(
            "the line nests JSON too deeply to read (no receipt nests more than 3 levels)"
        ) from None
    try:
        return _from_value(value)
    except RecursionError:  # an OTLP AnyValue nested hundreds of levels deep
        raise NotAReceipt("the line nests OTLP values too deeply to read") from None


def _from_value(obj: Any) -> list[dict[str, Any]]:
    if not isinstance(obj, dict):
        raise NotAReceipt("the line is JSON but not an object, so it holds no receipt")
    if "schema" in obj:
        return [obj]
    if _OTLP_KEYS.intersection(obj):
        found = _from_otlp(obj)
        if not found:
            raise NotAReceipt("the OTLP export on this line holds no streamguard.receipt record")
        return found
    if "body" in obj:
        return [_from_body(obj["body"])]
    if isinstance(obj.get("line"), str):
        return [_from_body(obj["line"])]
    if isinstance(obj.get("events"), list):
        found = [_from_attributes(e.get("attributes")) for e in obj["events"] if _is_event(e)]
        if not found:
            raise NotAReceipt("the span on this line has no streamguard.receipt event")
        return found
    if "attributes" in obj:
        return [_from_attributes(obj["attributes"])]
    raise NotAReceipt(
        "the line holds no receipt: expected a receipt object, a log record with the receipt "
        "in 'body', or a span event with 'streamguard.receipt.json' in its attributes"
    )


def _from_body(body: Any) -> dict[str, Any]:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            raise NotAReceipt("the log body is a string but not JSON") from None
    body = _any_value(body) if _is_any_value(body) else body
    if not isinstance(body, dict) or "schema" not in body:
        raise NotAReceipt("the log body is not a receipt object")
    return body


def _from_attributes(attributes: Any) -> dict[str, Any]:
    attrs = _key_values(attributes) if isinstance(attributes, list) else attributes
    if not isinstance(attrs, Mapping) or not isinstance(attrs.get(ATTR_JSON), str):
        raise NotAReceipt(f"the span event attributes have no {ATTR_JSON!r} string")
    try:
        unsigned = json.loads(attrs[ATTR_JSON])
    except ValueError:
        raise NotAReceipt(f"the {ATTR_JSON!r} attribute is not valid JSON") from None
    if not isinstance(unsigned, dict):
        raise NotAReceipt(f"the {ATTR_JSON!r} attribute is not a JSON object")
    receipt = dict(unsigned)
    claimed = attrs.get(ATTR_HASH)
    if claimed is None:
        # The hash is derived data; without it, the signature alone guards the JSON.
        try:
            claimed = hashlib.sha256(canonical_bytes(unsigned)).hexdigest()
        except (ValueError, TypeError):
            claimed = None
    receipt["hash"] = claimed
    receipt["signature"] = {
        "alg": attrs.get(ATTR_SIG_ALG),
        "key_id": attrs.get(ATTR_SIG_KEY_ID),
        "value": attrs.get(ATTR_SIG_VALUE),
    }
    return receipt


def _is_event(event: Any) -> bool:
    return isinstance(event, dict) and event.get("name") == SPAN_EVENT_NAME


def _from_otlp(obj: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for resource in _list(obj, "resourceLogs", "resource_logs"):
        for scope in _list(resource, "scopeLogs", "scope_logs"):
            for record in _list(scope, "logRecords", "log_records"):
                if not isinstance(record, dict):
                    continue
                body = _any_value(record.get("body"))
                if isinstance(body, dict) and body.get("schema") == SCHEMA:
                    found.append(body)
    for resource in _list(obj, "resourceSpans", "resource_spans"):
        for scope in _list(resource, "scopeSpans", "scope_spans"):
            for span in _list(scope, "spans"):
                for event in _list(span, "events"):
                    if _is_event(event):
                        found.append(_from_attributes(event.get("attributes", [])))
    return found


def _list(obj: Any, *names: str) -> list[Any]:
    if isinstance(obj, dict):
        for name in names:
            value = obj.get(name)
            if isinstance(value, list):
                return value
    return []


# OTLP/JSON AnyValue, in protobuf's camelCase JSON names or the original snake_case ones.
_KINDS = {
    "stringvalue",
    "boolvalue",
    "intvalue",
    "doublevalue",
    "kvlistvalue",
    "arrayvalue",
    "bytesvalue",
}


def _is_any_value(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and next(iter(value)).replace("_", "").lower() in _KINDS
    )


def _any_value(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return None  # an empty AnyValue is how OTLP encodes None
    kind, inner = next(iter(value.items()))
    kind = kind.replace("_", "").lower()
    if kind == "intvalue":
        # int64 is a JSON string in OTLP/JSON; anything else is left as is for the checks.
        digits = inner.removeprefix("-") if isinstance(inner, str) else ""
        if 0 < len(digits) <= 20 and digits.isdigit() and digits.isascii():
            return int(inner)
        return inner
    if kind == "kvlistvalue":
        return _key_values(_list(inner, "values"))
    if kind == "arrayvalue":
        return [_any_value(item) for item in _list(inner, "values")]
    return inner


def _key_values(pairs: list[Any]) -> dict[str, Any]:
    return {
        pair["key"]: _any_value(pair.get("value"))
        for pair in pairs
        if isinstance(pair, dict) and isinstance(pair.get("key"), str)
    }
