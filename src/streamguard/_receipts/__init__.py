"""Receipts: the model and its canonical bytes, signing, the hash chain, sinks and verification.

::

    model.Receipt ──canonical.canonical_bytes──► bytes ──sha256──► hash
          ▲                                        └──signing.Signer──► signature
    chain.Ledger.seal(fields)   (seq, prev_hash: one chain per ledger)
          │
          ▼
    sinks.ReceiptSink.emit ── ledger.JsonlLedgerSink (local JSON lines, fsync; written
                           │                         inside the seal, in chain order)
                           └─ OTel span event / log record (streamguard._telemetry)
    verify.verify_files / verify_main  ◄── JSON lines from the ledger, Loki, span exports, OTLP
          └─ _untrusted (bounded lines, strict UTF-8, terminal-safe text), exports (shapes)

Floor: ``_receipts``, just above the bottom floor (``exceptions``, ``_reasons``, ``_config``,
``_extras``); the engine and everything above may import it, it imports none of them.
"""

from typing import TYPE_CHECKING, Any

from streamguard._receipts.canonical import canonical_bytes
from streamguard._receipts.chain import Ledger
from streamguard._receipts.ledger import JsonlLedgerSink
from streamguard._receipts.model import (
    GENESIS_HASH,
    SCHEMA,
    Costs,
    Receipt,
    Signature,
    Times,
    Tokens,
    format_money,
)
from streamguard._receipts.signing import (
    Ed25519Signer,
    Ed25519Verifier,
    HmacSigner,
    HmacVerifier,
    Signer,
    Verifier,
    generate_ed25519_keypair,
    load_signer,
    load_verifier,
)
from streamguard._receipts.sinks import ReceiptSink

if TYPE_CHECKING:
    from streamguard._receipts.verify import (
        VerifyError,
        VerifyReport,
        verify_files,
        verify_main,
        verify_receipts,
    )

_LAZY = frozenset({"VerifyError", "VerifyReport", "verify_files", "verify_main", "verify_receipts"})


def __getattr__(name: str) -> Any:
    # verify is imported on first use: the CLI path needs it, instrument() does not, and
    # `python -m streamguard._receipts.verify` must not find it imported already.
    if name in _LAZY:
        from streamguard._receipts import verify

        return getattr(verify, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GENESIS_HASH",
    "SCHEMA",
    "Costs",
    "Ed25519Signer",
    "Ed25519Verifier",
    "HmacSigner",
    "HmacVerifier",
    "JsonlLedgerSink",
    "Ledger",
    "Receipt",
    "ReceiptSink",
    "Signature",
    "Signer",
    "Times",
    "Tokens",
    "Verifier",
    "VerifyError",
    "VerifyReport",
    "canonical_bytes",
    "format_money",
    "generate_ed25519_keypair",
    "load_signer",
    "load_verifier",
    "verify_files",
    "verify_main",
    "verify_receipts",
]
