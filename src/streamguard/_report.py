"""``streamguard report FILE...``: what the receipts say about money, for teams without Grafana.

Reads receipts from every input ``streamguard verify`` reads (the JSON-lines ledger, Loki or
``logcli`` lines, span exports, OTLP/JSON files; ``-`` is stdin) and sums spend, prevented spend
and undelivered spend, in total and by model, stop reason, outcome and UTC day. Prints rich
tables, or JSON (``--json``); ``--html OUT`` also writes a self-contained page with charts.

Guarantees
    - Money is summed as ``Decimal`` from the receipts' decimal strings: no float ever touches
      a total, and ``--json`` writes totals as exact decimal strings.
    - A receipt seen twice (the ledger and Loki, a log record and its span event) counts once:
      receipts are keyed by (ledger_id, seq, hash).
    - Input is untrusted (see ``streamguard._receipts._untrusted``): lines are read bounded
      (16 MiB) and strictly as UTF-8; every line that holds no receipt, and every receipt that
      does not parse, is reported on stderr as one line (file:line: why), never a traceback,
      and the exit status is 1; the summary of the good receipts is still printed (and
      written with ``--html``). A file that cannot be read exits with status 2.
    - Receipt fields never reach the terminal as markup or control characters (rich ``Text``,
      escapes for non-printable characters); ``--json`` is plain ASCII JSON; the HTML page
      escapes every text.
    - An amount of more than ``MAX_MONEY_CHARS`` characters is not plausible: that receipt is
      reported and skipped (sums are exact for any number of receipts within that bound).
    - Signatures and the chain are not checked here: that is ``streamguard verify``.
    - Inputs longer than ``PROGRESS_LINES`` lines show a progress bar on stderr.

Example::

    streamguard report /var/lib/app/receipts.jsonl --html spend.html
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import TYPE_CHECKING, Any, BinaryIO

from streamguard._receipts._untrusted import numbered_lines
from streamguard._receipts.exports import NotAReceipt, receipts_in_line
from streamguard._receipts.model import Receipt
from streamguard.exceptions import ReceiptVerificationError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "PROGRESS_LINES",
    "Bucket",
    "Summary",
    "summarize",
    "summarize_binary",
    "summarize_files",
]

PROGRESS_LINES = 20_000
"""Inputs with more lines than this show a progress bar (on stderr)."""

ZERO = Decimal(0)
MAX_MONEY_CHARS = 40
"""The longest money string accepted (a receipt's amounts are ~10-20 characters)."""
# Enough digits that sums of amounts within MAX_MONEY_CHARS never round, however many.
_EXACT = Context(prec=120)


@dataclass(slots=True)
class Bucket:
    """Totals over a group of receipts. Money in USD as ``Decimal``; ``unpriced`` counts
    receipts whose model had no known price (their cost is unknown, not zero)."""

    streams: int = 0
    spend: Decimal = ZERO
    prevented: Decimal = ZERO
    undelivered: Decimal = ZERO
    tokens_input: int = 0
    tokens_produced: int = 0
    tokens_undelivered: int = 0
    tokens_prevented: int = 0
    unpriced: int = 0

    def add(self, receipt: Receipt) -> None:
        cost, tokens = receipt.cost, receipt.tokens
        self.streams += 1
        if cost.input is None and cost.output is None:
            self.unpriced += 1
        add = _EXACT.add
        self.spend = add(self.spend, add(_money(cost.input), _money(cost.output)))
        self.prevented = add(self.prevented, _money(cost.prevented_estimate))
        self.undelivered = add(self.undelivered, _money(cost.undelivered))
        self.tokens_input += tokens.input or 0
        self.tokens_produced += tokens.produced
        self.tokens_undelivered += tokens.undelivered
        self.tokens_prevented += tokens.prevented_estimate

    def to_json(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "spend_usd": _decimal(self.spend),
            "prevented_usd": _decimal(self.prevented),
            "undelivered_usd": _decimal(self.undelivered),
            "tokens": {
                "input": self.tokens_input,
                "produced": self.tokens_produced,
                "undelivered": self.tokens_undelivered,
                "prevented": self.tokens_prevented,
            },
            "unpriced": self.unpriced,
        }


@dataclass(slots=True)
class Summary:
    """Totals in all and by model, stop reason, outcome and UTC day (``YYYY-MM-DD``)."""

    total: Bucket = field(default_factory=Bucket)
    by_model: dict[str, Bucket] = field(default_factory=dict)
    by_reason: dict[str, Bucket] = field(default_factory=dict)
    by_outcome: dict[str, Bucket] = field(default_factory=dict)
    by_day: dict[str, Bucket] = field(default_factory=dict)
    duplicates: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    first_ns: int | None = None
    last_ns: int | None = None
    _seen: set[tuple[str, int, str]] = field(default_factory=set, repr=False)

    def add(self, receipt: Receipt) -> None:
        """Count ``receipt`` unless the same one was counted already.

        Raises ``ValueError`` (counting nothing) for an implausibly long amount.
        """
        cost = receipt.cost
        for name in ("input", "output", "undelivered", "prevented_estimate"):
            value = getattr(cost, name)
            if value is not None and len(value) > MAX_MONEY_CHARS:
                raise ValueError(
                    f"cost.{name} has {len(value)} characters, more than any real amount "
                    f"({MAX_MONEY_CHARS}): not counted"
                )
        key = (receipt.ledger_id, receipt.seq, receipt.hash)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        finalized = receipt.times.finalized
        day = datetime.fromtimestamp(finalized // 1_000_000_000, UTC).date().isoformat()
        groups = (
            (self.by_model, receipt.model or "(unknown)"),
            (self.by_reason, receipt.reason),
            (self.by_outcome, receipt.outcome),
            (self.by_day, day),
        )
        for group, name in groups:
            group.setdefault(name, Bucket()).add(receipt)
        self.total.add(receipt)
        self.first_ns = finalized if self.first_ns is None else min(self.first_ns, finalized)
        self.last_ns = finalized if self.last_ns is None else max(self.last_ns, finalized)

    def skip(self, where: str, reason: str) -> None:
        """Count a bad line or receipt; the first ``SHOWN_PROBLEMS`` are kept to be printed."""
        self.skipped += 1
        if len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append(f"{where}: {reason}")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; money as exact decimal strings."""

        def groups(buckets: dict[str, Bucket]) -> dict[str, Any]:
            return {name: bucket.to_json() for name, bucket in buckets.items()}

        return {
            "receipts": self.total.streams,
            "duplicates": self.duplicates,
            "skipped_lines": self.skipped,
            "first": _iso(self.first_ns),
            "last": _iso(self.last_ns),
            "total": self.total.to_json(),
            "by_model": groups(by_spend(self.by_model)),
            "by_reason": groups(by_spend(self.by_reason)),
            "by_outcome": groups(by_spend(self.by_outcome)),
            "by_day": groups(dict(sorted(self.by_day.items()))),
        }


def by_spend(buckets: dict[str, Bucket]) -> dict[str, Bucket]:
    """The buckets, largest spend first (then most streams, then name)."""
    return dict(sorted(buckets.items(), key=lambda kv: (-kv[1].spend, -kv[1].streams, kv[0])))


def summarize(
    lines: Iterable[str],
    *,
    source: str = "<input>",
    into: Summary | None = None,
    on_line: Callable[[], None] | None = None,
) -> Summary:
    """Add the receipts in ``lines`` (JSON lines, any shape ``verify`` reads) to a summary.

    >>> summarize(open("receipts.jsonl")).total.spend  # doctest: +SKIP
    Decimal('0.0123')
    """
    summary = Summary() if into is None else into
    for number, text in enumerate(lines, 1):
        if on_line is not None:
            on_line()
        _summarize_line(summary, text, f"{source}:{number}")
    return summary


def summarize_binary(
    stream: BinaryIO,
    *,
    source: str = "<input>",
    into: Summary | None = None,
    on_line: Callable[[], None] | None = None,
) -> Summary:
    """``summarize`` for a binary stream: lines read bounded and strictly as UTF-8."""
    summary = Summary() if into is None else into
    for number, text, problem in numbered_lines(stream):
        if on_line is not None:
            on_line()
        if problem is not None:
            summary.skip(f"{source}:{number}", problem)
        elif text is not None:
            _summarize_line(summary, text, f"{source}:{number}")
    return summary


def _summarize_line(summary: Summary, text: str, where: str) -> None:
    if not text.strip():
        return
    try:
        found = receipts_in_line(text)
    except json.JSONDecodeError as exc:
        summary.skip(where, f"the line is not valid JSON ({exc.msg})")
        return
    except NotAReceipt as exc:
        summary.skip(where, str(exc))
        return
    except Exception as exc:  # untrusted input: any fault is this line's, not the report's
        summary.skip(where, f"the line could not be read as a receipt ({type(exc).__name__})")
        return
    for data in found:
        try:
            summary.add(Receipt.from_dict(data))
        except (ReceiptVerificationError, ValueError) as exc:
            summary.skip(where, str(exc))
        except Exception as exc:  # untrusted input: any fault is this receipt's
            summary.skip(where, f"malformed receipt ({type(exc).__name__})")


def summarize_files(
    paths: Sequence[str],
    *,
    progress: Console | None = None,
    progress_lines: int = PROGRESS_LINES,
) -> Summary:
    """Summarize the receipts in ``paths`` (``-`` is stdin) together.

    With ``progress`` (a rich console, normally stderr), inputs of more than ``progress_lines``
    lines show a progress bar there. Raises ``OSError`` if a file cannot be read.
    """
    summary = Summary()
    total = None if "-" in paths else sum(_count_lines(p) for p in paths)
    if progress is None or total is None or total <= progress_lines:
        for path in paths:
            _feed(path, summary, None)
        return summary
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("reading receipts"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=progress, transient=True) as bar:
        task = bar.add_task("lines", total=total)
        step = max(1, total // 200)  # ~200 updates, whatever the size
        counter = [0]

        def tick() -> None:
            counter[0] += 1
            if counter[0] % step == 0:
                bar.update(task, completed=counter[0])

        for path in paths:
            _feed(path, summary, tick)
        bar.update(task, completed=total)
    return summary


def _feed(path: str, summary: Summary, tick: Callable[[], None] | None) -> None:
    if path == "-":
        binary = getattr(sys.stdin, "buffer", None)  # None: a text stream stands in
        if binary is None:
            summarize(sys.stdin, source="<stdin>", into=summary, on_line=tick)
        else:
            summarize_binary(binary, source="<stdin>", into=summary, on_line=tick)
        return
    with open(path, "rb") as f:
        summarize_binary(f, source=path, into=summary, on_line=tick)


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _decimal(amount: Decimal) -> str:
    """Fixed-point text, never exponent notation (``str(Decimal("1E-7"))`` is ``"1E-7"``)."""
    return format(amount, "f")


def _money(value: str | None) -> Decimal:
    return ZERO if value is None else Decimal(value)


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).isoformat().replace("+00:00", "Z")


def money_cell(bucket: Bucket, amount: Decimal) -> str:
    """``usd(amount)``, or ``no price`` when no receipt of the bucket had a known price."""
    return "no price" if bucket.unpriced == bucket.streams else usd(amount)


def usd(amount: Decimal) -> str:
    """``$1,234.567891``: at most six decimals, trailing zeros dropped (display only)."""
    if amount == 0:
        return "$0"
    shown = amount.quantize(Decimal("0.000001"), context=_EXACT)
    text = format(shown, ",f").rstrip("0").rstrip(".")
    return f"${text}" if shown else f"<${Decimal('0.000001')}"


SHOWN_PROBLEMS = 1000
"""Bad lines named one per line on stderr; beyond this only their number."""
