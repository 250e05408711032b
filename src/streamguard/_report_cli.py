"""``streamguard report``: the command line over the summary (``_report``) and its two
renderings (``_report_terminal``, ``_report_html``).

Floor: the public face (beside ``cli``); imports ``_report`` and its renderers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from streamguard._receipts._untrusted import terminal_safe
from streamguard._report import summarize_files

__all__ = ["report_main"]


def report_main(argv: Sequence[str] | None = None) -> int:
    """``streamguard report FILE... [--html OUT] [--json] [--title TEXT]``.

    Exit status: 0 with a summary (even of zero receipts), 1 when a line or receipt of the
    input was bad (each is named on stderr; the summary of the rest is still printed and
    written), 2 for usage errors or an unreadable file.
    """
    parser = argparse.ArgumentParser(
        prog="streamguard report",
        description="Summarize receipts (JSON lines from the local ledger, Loki, span exports or "
        "OTLP/JSON files): spend, prevented and undelivered spend by model, stop reason and "
        "day. Does not check signatures: run `streamguard verify` for that.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSON-lines file; - for stdin")
    parser.add_argument("--html", metavar="OUT", help="also write a self-contained HTML report")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--title", default="StreamGuard spend report", help="report title")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    from rich.console import Console

    from streamguard._report_terminal import print_summary

    # Piped output has no width of its own: wide enough that tables never cut a name (unless
    # COLUMNS says how wide).
    wide = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    out = Console(highlight=False, soft_wrap=True, width=None if wide else 120)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    from rich.text import Text

    def error(message: str) -> None:
        err.print(Text(terminal_safe(message), style="red"))

    try:
        summary = summarize_files(args.files, progress=err)
    except OSError as exc:
        error(
            f"streamguard report: cannot read {exc.filename}: {exc.strerror or type(exc).__name__}"
        )
        return 2
    if args.json:
        # Plain ASCII JSON: valid whatever the receipts hold, and inert in a terminal.
        sys.stdout.write(json.dumps(summary.to_json(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        print_summary(out, summary, args.title)
    for problem in summary.problems:
        err.print(Text(terminal_safe(problem)))
    if summary.skipped:
        more = summary.skipped - len(summary.problems)
        tail = f" ({more} more not shown)" if more else ""
        error(f"streamguard report: {summary.skipped} bad line(s) or receipt(s) skipped{tail}")
    if args.html:
        from streamguard._report_html import render_html

        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(render_html(summary, args.title))
        except OSError as exc:
            error(f"streamguard report: cannot write {args.html}: {exc.strerror}")
            return 2
        err.print(Text(terminal_safe(f"wrote {args.html}")))
    return 1 if summary.skipped else 0
