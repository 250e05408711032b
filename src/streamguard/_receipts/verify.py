"""Verify exported receipts: hashes, signatures and chain continuity (``streamguard verify``).

Checks, per receipt, in this order: it parses as a receipt v1 (strictly); ``hash`` is the
SHA-256 of its canonical bytes ("edited after it was sealed" otherwise); the signature verifies;
and, per ledger, the chain holds: seq 0, 1, 2, ... with no gap, each ``prev_hash`` equal to the
previous receipt's ``hash`` (seq 0: ``GENESIS_HASH``).

Decisions
    - Chain order is input order (files in the order given, lines in file order), so swapped
      lines are reported. ``sort=True`` (``--sort``) checks each ledger in seq order instead,
      for exports that reorder records (Loki returns newest first).
    - An exact duplicate (same ledger, seq and hash, and it verifies) is tolerated and counted
      in ``duplicates``: OTLP delivery is at-least-once and the same receipt may come from the
      ledger file and from Loki. A *different* receipt at an already seen (ledger, seq) is an
      error (a fork or a replacement), as is a ``receipt_id`` reused at another position.
    - A ledger must start at seq 0 unless ``allow_partial=True`` (``--partial``): an export
      window that does not reach back to the first receipt.
    - Deleting the *last* receipts of a ledger leaves no trace in the chain itself; compare
      the count with the ``streamguard.receipts`` metric.
    - Input with no receipt at all fails ("no receipts found"): an empty export proves nothing.
    - Several chains may share one file (forked workers appending to one ledger, each with its
      own ledger id): each chain is checked on its own, in file order.
    - Input is untrusted (see ``_untrusted``): each bad line is one error naming file:line and
      why (not JSON, not UTF-8, over 16 MiB, a 5000-digit number, nesting too deep, not a
      receipt); nothing in a line ends ``verify`` in a traceback, and what is printed is
      escaped for the terminal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from streamguard._receipts._untrusted import numbered_lines, terminal_safe
from streamguard._receipts.exports import NotAReceipt, receipts_in_line
from streamguard._receipts.model import GENESIS_HASH, Receipt
from streamguard._receipts.signing import (
    ENV_KEY_ID,
    ENV_SIGNING_KEY,
    ENV_VERIFY_KEY_FILE,
    Verifier,
    _load_verifier,
)
from streamguard.exceptions import ConfigurationError, ReceiptVerificationError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["VerifyError", "VerifyReport", "verify_files", "verify_main", "verify_receipts"]


@dataclass(frozen=True, slots=True)
class VerifyError:
    """One failed check: where (``file``, 1-based ``line``), which receipt, and why."""

    file: str
    line: int | None
    receipt_id: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.receipt_id:
            where += f": receipt {self.receipt_id}"
        elif self.line is not None:
            where += ": receipt (id unreadable)"
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Counts and problems. ``receipts`` excludes tolerated exact ``duplicates``."""

    receipts: int
    ledgers: int
    ok: int
    duplicates: int
    errors: tuple[VerifyError, ...]

    @property
    def passed(self) -> bool:
        return not self.errors

    @property
    def first_error(self) -> VerifyError | None:
        return self.errors[0] if self.errors else None

    def raise_if_failed(self) -> None:
        """Raise ``ReceiptVerificationError`` for the first problem, if there is one."""
        if self.errors:
            first = self.errors[0]
            raise ReceiptVerificationError(str(first), receipt_id=first.receipt_id, line=first.line)


def verify_receipts(
    lines: Iterable[str],
    verifier: Verifier,
    *,
    source: str = "<input>",
    sort: bool = False,
    allow_partial: bool = False,
) -> VerifyReport:
    """Verify receipts given as JSON lines (any shape ``exports`` accepts); blank lines skip.

    ``source`` names the input in errors. Never raises for bad receipts: see the report.

    >>> report = verify_receipts(open("ledger.jsonl"), signer.verifier())  # doctest: +SKIP
    >>> report.passed, report.first_error
    (True, None)
    """
    checker = _Checker(verifier, sort=sort, allow_partial=allow_partial)
    checker.feed(lines, source)
    return checker.report()


def verify_files(
    paths: Sequence[str], verifier: Verifier, *, sort: bool = False, allow_partial: bool = False
) -> VerifyReport:
    """Verify the receipts in ``paths`` (``"-"`` is stdin) as one input, chains across files.

    Lines are read bounded and strictly as UTF-8 (see ``_untrusted.numbered_lines``). Raises
    ``OSError`` if a file cannot be read.
    """
    checker = _Checker(verifier, sort=sort, allow_partial=allow_partial)
    for path in paths:
        if path == "-":
            binary = getattr(sys.stdin, "buffer", None)  # None: a text stream stands in
            if binary is None:
                checker.feed(sys.stdin, "<stdin>")
            else:
                checker.feed_binary(binary, "<stdin>")
            continue
        with open(path, "rb") as f:
            checker.feed_binary(f, path)
    return checker.report()


@dataclass(slots=True)
class _Record:
    receipt: Receipt
    file: str
    line: int
    order: tuple[int, int, int]  # (file, line, position within the line): input order
    ok: bool = True

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


_RECEIPT_ID = re.compile(r'"receipt_id"\s*:\s*"([^"\\]{1,200})"')


class _Checker:
    def __init__(self, verifier: Verifier, *, sort: bool, allow_partial: bool) -> None:
        self._verifier = verifier
        self._sort = sort
        self._allow_partial = allow_partial
        self._records: list[_Record] = []
        self._at: dict[tuple[str, int], _Record] = {}
        self._by_id: dict[str, _Record] = {}
        self._errors: list[tuple[tuple[int, int, int, int], VerifyError]] = []
        self._seen = 0
        self._duplicates = 0
        self._file_index = -1

    def feed(self, lines: Iterable[str], source: str) -> None:
        self._file_index += 1
        for number, text in enumerate(lines, 1):
            if text.strip():
                self._line(text, source, number)

    def feed_binary(self, stream: BinaryIO, source: str) -> None:
        self._file_index += 1
        for number, text, problem in numbered_lines(stream):
            if problem is not None:
                order = (self._file_index, number, 0)
                self._error(order, 0, VerifyError(source, number, None, problem))
            elif text is not None and text.strip():
                self._line(text, source, number)

    def _error(self, order: tuple[int, int, int], phase: int, error: VerifyError) -> None:
        # Sorting by (input position, phase) makes the first error the earliest in the input,
        # and at one position the parse/hash/signature finding before the chain finding.
        self._errors.append(((*order, phase), error))

    def _line(self, text: str, source: str, number: int) -> None:
        try:
            found = receipts_in_line(text)
        except Exception as exc:  # untrusted input: any fault is this line's
            if isinstance(exc, json.JSONDecodeError):
                reason = f"the line is not valid JSON, so it was truncated or corrupted ({exc.msg})"
            elif isinstance(exc, NotAReceipt):
                reason = str(exc)
            else:
                reason = f"the line could not be read as a receipt ({type(exc).__name__})"
            # Name the receipt even when the line does not parse, if its id is legible.
            match = _RECEIPT_ID.search(text)
            self._seen += match is not None
            rid = match.group(1) if match else None
            self._error((self._file_index, number, 0), 0, VerifyError(source, number, rid, reason))
            return
        for index, data in enumerate(found):
            self._seen += 1
            self._check(data, source, number, (self._file_index, number, index))

    def _check(
        self, data: dict[str, object], source: str, number: int, order: tuple[int, int, int]
    ) -> None:
        try:
            receipt = Receipt.from_dict(data)
        except ReceiptVerificationError as exc:
            self._error(order, 0, VerifyError(source, number, exc.receipt_id, str(exc)))
            return
        except Exception as exc:  # untrusted input: any fault is this receipt's
            reason = f"malformed receipt ({type(exc).__name__})"
            self._error(order, 0, VerifyError(source, number, None, reason))
            return
        rec = _Record(receipt, source, number, order)

        def fail(reason: str) -> None:
            rec.ok = False
            self._error(order, 1, VerifyError(source, number, receipt.receipt_id, reason))

        data_bytes = receipt.canonical_bytes()
        if hashlib.sha256(data_bytes).hexdigest() != receipt.hash:
            fail("hash mismatch: the receipt was edited after it was sealed")
        elif not self._verifier.verify(data_bytes, receipt.signature):
            fail(_signature_reason(self._verifier, receipt))
        position = (receipt.ledger_id, receipt.seq)
        prior = self._at.get(position)
        if prior is not None:
            if rec.ok and prior.receipt.hash == receipt.hash:
                self._seen -= 1
                self._duplicates += 1
            elif rec.ok:
                fail(
                    f"seq {receipt.seq} of ledger {receipt.ledger_id} appears twice with "
                    f"different contents (first at {prior.where}): the chain forked or a "
                    "receipt was replaced"
                )
            return  # the first receipt at this position stands for it in the chain
        other = self._by_id.get(receipt.receipt_id)
        if other is not None:
            fail(
                f"receipt_id already used by seq {other.receipt.seq} of ledger "
                f"{other.receipt.ledger_id} at {other.where}: a receipt was replayed"
            )
        else:
            self._by_id[receipt.receipt_id] = rec
        self._at[position] = rec
        self._records.append(rec)

    def report(self) -> VerifyReport:
        ledgers: dict[str, list[_Record]] = {}
        for rec in self._records:
            ledgers.setdefault(rec.receipt.ledger_id, []).append(rec)
        for group in ledgers.values():
            if self._sort:
                group.sort(key=lambda rec: rec.receipt.seq)
            self._check_chain(group)
        errors = tuple(error for _, error in sorted(self._errors, key=lambda item: item[0]))
        if self._seen == 0 and not errors:
            errors = (VerifyError("<input>", None, None, "no receipts found in the input"),)
        return VerifyReport(
            receipts=self._seen,
            ledgers=len(ledgers),
            ok=sum(rec.ok for rec in self._records),
            duplicates=self._duplicates,
            errors=errors,
        )

    def _check_chain(self, group: list[_Record]) -> None:
        seqs = {rec.receipt.seq for rec in group}
        prev: Receipt | None = None
        for rec in group:
            receipt = rec.receipt
            reason = _link_problem(prev, receipt, seqs, self._allow_partial)
            if reason is not None:
                rec.ok = False
                self._error(
                    rec.order, 2, VerifyError(rec.file, rec.line, receipt.receipt_id, reason)
                )
            prev = receipt


def _link_problem(
    prev: Receipt | None, receipt: Receipt, seqs: set[int], allow_partial: bool
) -> str | None:
    seq = receipt.seq
    if prev is None:
        if seq == 0 and receipt.prev_hash != GENESIS_HASH:
            return "seq 0 does not carry the genesis prev_hash (64 zeros): edited"
        if seq != 0 and not allow_partial:
            return (
                f"ledger {receipt.ledger_id} starts at seq {seq}: {_span(0, seq - 1)} missing "
                "(use --partial if the export starts mid-ledger)"
            )
        return None
    expected = prev.seq + 1
    if seq == expected:
        if receipt.prev_hash != prev.hash:
            return f"prev_hash does not match the hash of seq {prev.seq}: reordered or edited"
        return None
    if seq < expected or expected in seqs:
        return f"seq {seq} follows seq {prev.seq}: receipts are out of order (reordered)"
    return f"seq {seq} follows seq {prev.seq}: receipt(s) missing ({_span(expected, seq - 1)})"


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}..{last}"


def _signature_reason(verifier: Verifier, receipt: Receipt) -> str:
    sig = receipt.signature
    if sig.alg != verifier.alg:
        return f"signed with {sig.alg} but the verification key is {verifier.alg}"
    if verifier.key_id is not None and sig.key_id != verifier.key_id:
        return f"signed with key id {sig.key_id!r} but only key id {verifier.key_id!r} is accepted"
    return (
        f"signature does not verify with key id {sig.key_id!r}: a different key signed it, or "
        "the receipt or its signature was altered"
    )


# --- command line -----------------------------------------------------------------------------


def verify_main(argv: Sequence[str] | None = None) -> int:
    """``streamguard verify FILE... [--key PEM] [--hmac-key SECRET] [--key-id ID]``.

    Exit status: 0 when every receipt verifies, 1 naming the first bad receipt (file:line,
    receipt id, why), 2 for usage or configuration errors (no key, unreadable file).
    """
    parser = argparse.ArgumentParser(
        prog="streamguard verify",
        description="Check signatures, hashes and chain continuity of exported receipts "
        "(JSON lines from the local ledger, Loki, span exports or OTLP/JSON files).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSON-lines file; - for stdin")
    parser.add_argument(
        "--key", metavar="PUBLIC_PEM", help=f"Ed25519 public key (default ${ENV_VERIFY_KEY_FILE})"
    )
    parser.add_argument(
        "--hmac-key", metavar="HEX|BASE64", help=f"HMAC secret (default ${ENV_SIGNING_KEY})"
    )
    parser.add_argument(
        "--key-id", metavar="ID", help=f"accept only this key id (default ${ENV_KEY_ID}, or any)"
    )
    parser.add_argument(
        "--sort", action="store_true", help="check each ledger in seq order, not input order"
    )
    parser.add_argument(
        "--partial", action="store_true", help="allow a ledger to start after seq 0"
    )
    from rich.console import Console  # imported here: only the CLI needs rich
    from rich.text import Text

    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    # soft_wrap: never break a line, so piped output stays greppable (file:line: receipt ...).
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        verifier = _load_verifier(
            args.key, args.hmac_key, args.key_id, None, names=("--key", "--hmac-key", "--key-id")
        )
        report = verify_files(args.files, verifier, sort=args.sort, allow_partial=args.partial)
    except ConfigurationError as exc:
        err.print(Text(terminal_safe(f"streamguard verify: {exc}"), style="red"))
        return 2
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        message = f"streamguard verify: cannot read {exc.filename}: {reason}"
        err.print(Text(terminal_safe(message), style="red"))
        return 2
    _print_report(out, report, verifier, len(args.files))
    return 0 if report.passed else 1


def _print_report(out: Console, report: VerifyReport, verifier: Verifier, files: int) -> None:
    from rich.text import Text

    key = f"{verifier.alg}, key id {verifier.key_id or 'any'}"
    out.print(
        Text(
            terminal_safe(
                f"{report.receipts} receipt(s) in {report.ledgers} ledger(s) from {files} "
                f"file(s) [{key}]: {report.ok} ok, {len(report.errors)} problem(s), "
                f"{report.duplicates} duplicate(s) skipped"
            )
        )
    )
    first = report.first_error
    if first is None:
        out.print(Text("OK: every hash, signature and chain link verifies", style="bold green"))
        return
    # Receipt fields and file names are untrusted: Text (no markup), control characters escaped.
    out.print(Text("FAILED: ", style="bold red") + Text(terminal_safe(str(first))))
    for error in report.errors[1:_SHOWN]:
        out.print(Text(terminal_safe(f"  also: {error}")))
    if len(report.errors) > _SHOWN:
        out.print(Text(f"  ... and {len(report.errors) - _SHOWN} more"))


_SHOWN = 1000
"""Problems printed one per line; beyond this only their number (the exit status is 1)."""

if __name__ == "__main__":
    sys.exit(verify_main(sys.argv[1:]))
