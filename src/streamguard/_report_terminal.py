"""The terminal form of ``streamguard report``: a headline and three rich tables.

Names from receipts (models, reasons, outcomes) are untrusted: they are printed as rich ``Text``
(never parsed as markup, so a model named ``[/]`` or ``[link=...]`` is shown as it is) with
control characters escaped (``terminal_safe``), so no escape sequence reaches the terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from streamguard._receipts._untrusted import terminal_safe
from streamguard._report import Bucket, Summary, by_spend, money_cell, usd

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["print_summary"]


def print_summary(out: Console, summary: Summary, title: str) -> None:
    """Headline totals, then tables by model, by stop reason and by day (UTC)."""
    total = summary.total
    out.print(Text(terminal_safe(title), style="bold"))
    if total.streams == 0:
        out.print("No receipts found in the input.")
        return
    span = f"{summary.to_json()['first']} .. {summary.to_json()['last']}"
    outcomes = ", ".join(
        f"{name} {bucket.streams}" for name, bucket in by_spend(summary.by_outcome).items()
    )
    out.print(Text(terminal_safe(f"{total.streams} stream(s), {span} ({outcomes})")))
    headline = Table.grid(padding=(0, 3))
    for _ in range(3):
        headline.add_column()
    headline.add_row(
        Text(f"Spend {usd(total.spend)}", style="bold"),
        Text(f"Prevented (estimate) {usd(total.prevented)}", style="bold green"),
        Text(f"Undelivered {usd(total.undelivered)}", style="bold yellow"),
    )
    out.print(headline)
    if total.unpriced:
        out.print(f"{total.unpriced} stream(s) had no known price: their cost is not included.")
    out.print(_table("By model", "model", by_spend(summary.by_model)))
    out.print(_table("By stop reason", "reason", by_spend(summary.by_reason)))
    out.print(_table("By day (UTC)", "day", dict(sorted(summary.by_day.items()))))
    if summary.duplicates:
        out.print(f"{summary.duplicates} duplicate receipt(s) counted once.")


def _table(title: str, key: str, buckets: dict[str, Bucket]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    table.add_column(key)
    for name in ("streams", "spend", "prevented", "undelivered", "tokens out", "undeliv. tok"):
        table.add_column(name, justify="right")
    for name, b in buckets.items():
        table.add_row(
            Text(terminal_safe(name)),
            str(b.streams),
            money_cell(b, b.spend),
            money_cell(b, b.prevented),
            money_cell(b, b.undelivered),
            f"{b.tokens_produced:,}",
            f"{b.tokens_undelivered:,}",
        )
    return table
