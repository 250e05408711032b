"""The hash chain: a ``Ledger`` seals receipts with seq, prev_hash, hash and signature.

Guarantees of ``Ledger.seal``
    - Thread-safe: concurrent seals get distinct, gap-free ``seq`` values 0, 1, 2, ... and each
      receipt's ``prev_hash`` is the ``hash`` of the receipt sealed just before it (the first
      one's is ``GENESIS_HASH``).
    - Atomic: a seal that raises (invalid fields, a failing signer) consumes no ``seq`` and
      leaves the chain as it was, so a rejected receipt never leaves a gap.
    - Never unsigned: the returned receipt carries the signer's signature over its canonical
      bytes, and its ``hash`` is the SHA-256 of those bytes.

Chain order is seal order. A sink that must keep it on disk (the JSON-lines ledger) is fed
inside the chain's critical section through ``seal_bytes(..., then=...)``, so its lines are in
chain order under any number of threads; ``verify`` can sort by seq for exports that reorder
records (Loki).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any

from streamguard._receipts._hashing import sha256_hex
from streamguard._receipts.model import (
    GENESIS_HASH,
    SCHEMA,
    Costs,
    Receipt,
    Signature,
    Times,
    Tokens,
    encode_unsigned,
)
from streamguard._receipts.signing import Signer

__all__ = ["SEALED_FIELDS", "Ledger"]

SEALED_FIELDS = frozenset({"schema", "ledger_id", "seq", "prev_hash", "hash", "signature"})
"""Fields the ledger sets; ``seal`` rejects them (``schema`` is accepted if it is ``SCHEMA``)."""

_ACCEPTED = frozenset(Receipt.__dataclass_fields__) - SEALED_FIELDS
_REQUIRED = frozenset(
    name
    for name, f in Receipt.__dataclass_fields__.items()
    if name in _ACCEPTED and f.default is MISSING and f.default_factory is MISSING
)


class Ledger:
    """One hash chain of receipts, numbered from 0 (one per process unless configured).

    >>> from streamguard._receipts.signing import HmacSigner
    >>> ledger = Ledger(HmacSigner(b"0" * 32))
    >>> ledger.next_seq
    0
    """

    __slots__ = ("_ledger_id", "_lock", "_next_seq", "_placeholder", "_prev_hash", "_signer")

    def __init__(self, signer: Signer, ledger_id: str | None = None) -> None:
        if ledger_id is not None and (not isinstance(ledger_id, str) or not ledger_id):
            raise ValueError("ledger_id must be a non-empty string")
        self._signer = signer
        self._ledger_id = ledger_id if ledger_id is not None else uuid.uuid4().hex
        self._lock = threading.Lock()
        self._next_seq = 0
        self._prev_hash = GENESIS_HASH
        # Checks the signer's alg and key id up front, and stands in for the signature of
        # drafts (see seal).
        self._placeholder = Signature(signer.alg, signer.key_id, "-")

    @property
    def ledger_id(self) -> str:
        return self._ledger_id

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def next_seq(self) -> int:
        """The seq the next sealed receipt will get."""
        return self._next_seq

    @property
    def last_hash(self) -> str:
        """The hash of the last sealed receipt (``GENESIS_HASH`` before the first)."""
        return self._prev_hash

    def seal(self, fields: Mapping[str, Any]) -> Receipt:
        """Seal ``fields`` into the next receipt of this ledger (see ``seal_bytes``)."""
        return self.seal_bytes(fields)[0]

    def seal_bytes(
        self,
        fields: Mapping[str, Any],
        then: Callable[[Receipt, bytes], None] | None = None,
    ) -> tuple[Receipt, bytes]:
        """Seal ``fields`` into the next receipt; return it with its canonical bytes.

        ``then(receipt, canonical)`` runs inside the chain's critical section, right after the
        chain advanced: whatever it writes is written in chain order, whichever thread seals.
        It must not raise (the receipt is sealed by then either way) and must not seal.

        ``fields`` holds every ``Receipt`` field except ``ledger_id``, ``seq``, ``prev_hash``,
        ``hash``, ``signature`` and ``schema``; ``request_max_tokens``, ``detail``,
        ``trace_id``, ``span_id`` and ``attributes`` may be left out. ``tokens``, ``cost`` and
        ``times`` may be the dataclasses or plain dicts of their fields (``times`` as ints).
        Raises ``TypeError``/``ValueError`` naming the bad field; the chain is then unchanged.
        """
        kwargs = _prepare(fields)
        # Validation and encoding depend only on the caller's fields, so they happen outside
        # the lock, on a draft whose chain fields are placeholders: the canonical bytes are
        # encoded around prev_hash and seq, which are spliced in under the lock.
        draft = Receipt(
            ledger_id=self._ledger_id,
            seq=0,
            prev_hash=GENESIS_HASH,
            hash=GENESIS_HASH,
            signature=self._placeholder,
            **kwargs,
        )
        pieces = draft.canonical_pieces()
        signer = self._signer
        with self._lock:
            seq = self._next_seq
            prev_hash = self._prev_hash
            if pieces is not None:
                head, middle, tail = pieces
                data = b"".join((head, prev_hash.encode(), middle, str(seq).encode(), tail))
            else:  # an attribute name beyond U+FFFF (rare): the general encoder orders it
                body = draft.unsigned_dict()
                body["seq"] = seq
                body["prev_hash"] = prev_hash
                data = encode_unsigned(body, draft.attributes)
            digest = sha256_hex(data)  # the GIL held (see _hashing)
            signature = Signature(signer.alg, signer.key_id, signer.sign(data))
            # The draft has not escaped this function yet, so completing it in place is still
            # construction, not mutation of a frozen value (and saves a second validation).
            object.__setattr__(draft, "seq", seq)
            object.__setattr__(draft, "prev_hash", prev_hash)
            object.__setattr__(draft, "hash", digest)
            object.__setattr__(draft, "signature", signature)
            # Commit only after every step succeeded: a failed seal leaves no gap.
            self._next_seq = seq + 1
            self._prev_hash = digest
            if then is not None:
                then(draft, data)
        return draft, data

    def __repr__(self) -> str:
        return (
            f"Ledger(ledger_id={self._ledger_id!r}, next_seq={self._next_seq}, "
            f"signer={self._signer!r})"
        )


def _prepare(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validated constructor arguments for ``Receipt`` (nested parts as dataclasses)."""
    # A dict (what the runtime passes) first: the Mapping ABC's check runs Python code.
    if type(fields) is not dict and not isinstance(fields, Mapping):
        raise TypeError(f"fields must be a mapping, got {type(fields).__name__}")
    unknown = [k for k in fields if k not in _ACCEPTED]
    if unknown:
        if unknown == ["schema"] and fields["schema"] == SCHEMA:
            fields = {k: v for k, v in fields.items() if k != "schema"}
        else:
            raise ValueError(
                f"seal() got field(s) it cannot accept: {', '.join(sorted(map(str, unknown)))} "
                "(the ledger sets schema, ledger_id, seq, prev_hash, hash and signature)"
            )
    missing = _REQUIRED - fields.keys()
    if missing:
        raise ValueError(f"seal() is missing field(s): {', '.join(sorted(missing))}")
    kwargs = dict(fields)
    kwargs["tokens"] = _part(Tokens, "tokens", kwargs["tokens"])
    kwargs["cost"] = _part(Costs, "cost", kwargs["cost"])
    kwargs["times"] = _part(Times, "times", kwargs["times"])
    return kwargs


def _part(cls: type[Any], name: str, value: Any) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a {cls.__name__} or a mapping, got {type(value).__name__}")
    specs = cls.__dataclass_fields__
    unknown = sorted(str(k) for k in value if k not in specs)
    missing = [
        k
        for k, spec in specs.items()
        if k not in value and spec.default is MISSING and spec.default_factory is MISSING
    ]
    if unknown or missing:
        raise ValueError(f"{name} has unknown field(s) {unknown} and missing field(s) {missing}")
    return cls(**value)
