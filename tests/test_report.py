"""``streamguard report``: exact decimal totals by model, reason and day, from any export shape;
a terminal summary, progress on long inputs, and a self-contained HTML page whose charts render
in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from streamguard._receipts.chain import Ledger
from streamguard._receipts.model import Receipt
from streamguard._receipts.signing import HmacSigner
from streamguard._report import Summary, summarize, summarize_files
from streamguard._report_html import PREVENTED, SPEND, UNDELIVERED, render_html
from streamguard.cli import main
from streamguard.testing.sinks import receipt_fields

DAY_NS = 86_400 * 10**9
START = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-haiku-4-5"), ("ollama", "llama3.2")]
ENDINGS = [  # (outcome, reason, category)
    ("completed", "completed", None),
    ("cancelled", "consumer_closed", "client"),
    ("rejected", "budget_exceeded", "policy"),
    ("failed", "upstream_error", "upstream"),
    ("cancelled", "consumer_stalled", "client"),
    ("cancelled", "client_disconnect", "client"),
]


def make_receipts(n: int = 60, ledger: Ledger | None = None) -> list[Receipt]:
    """``n`` signed, chained receipts over five UTC days, three models (one unpriced) and six
    stop reasons, with costs whose float sums would not be exact."""
    ledger = ledger or Ledger(HmacSigner(bytes(32), key_id="r"))
    receipts = []
    for i in range(n):
        provider, model = MODELS[i % 3]
        outcome, reason, category = ENDINGS[i // 3 % len(ENDINGS)]
        priced = model != "llama3.2"
        k = i // 3 % 7 + 1
        finalized = START + (i % 5) * DAY_NS + i * 10**9
        receipts.append(
            ledger.seal(
                receipt_fields(
                    provider=provider,
                    model=model,
                    outcome=outcome,
                    reason=reason,
                    category=category,
                    cost={
                        "currency": "USD",
                        "input": "0.001" if priced else None,
                        "output": f"0.0{k}" if priced else None,
                        "undelivered": f"0.00{k}" if priced else None,
                        "prevented_estimate": f"0.0{8 - k}" if priced else None,
                        "pricing_source": "genai-prices" if priced else "unknown",
                    },
                    times={
                        "started": finalized - 10**9,
                        "first_chunk": None,
                        "stop_requested": None,
                        "upstream_closed": None,
                        "finalized": finalized,
                    },
                )
            )
        )
    return receipts


def expected(receipts: list[Receipt], key: Any) -> dict[str, dict[str, str | int]]:
    """Totals computed independently of the report, with Decimal."""
    out: dict[str, dict[str, Any]] = {}
    for r in receipts:
        b = out.setdefault(key(r), {"streams": 0, "spend": Decimal(0), "undelivered": Decimal(0)})
        b["streams"] += 1
        b["spend"] += Decimal(r.cost.input or 0) + Decimal(r.cost.output or 0)
        b["undelivered"] += Decimal(r.cost.undelivered or 0)
    return {
        k: {
            "streams": v["streams"],
            "spend": f"{v['spend']:f}",
            "undelivered": f"{v['undelivered']:f}",
        }
        for k, v in out.items()
    }


def observed(groups: dict[str, Any]) -> dict[str, dict[str, str | int]]:
    return {
        k: {"streams": v["streams"], "spend": v["spend_usd"], "undelivered": v["undelivered_usd"]}
        for k, v in groups.items()
    }


@pytest.fixture
def ledger_file(tmp_path: Path) -> tuple[Path, list[Receipt]]:
    receipts = make_receipts()
    path = tmp_path / "receipts.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in receipts))
    return path, receipts


def test_json_summary_has_exact_totals_by_model_reason_outcome_and_day(ledger_file, capsys) -> None:
    path, receipts = ledger_file
    assert main(["report", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    day = lambda r: f"2026-01-0{(r.times.finalized - START) // DAY_NS + 1}"  # noqa: E731
    assert observed(data["by_model"]) == expected(receipts, lambda r: r.model)
    assert observed(data["by_reason"]) == expected(receipts, lambda r: r.reason)
    assert observed(data["by_outcome"]) == expected(receipts, lambda r: r.outcome)
    assert observed(data["by_day"]) == expected(receipts, day)
    assert list(data["by_day"]) == [f"2026-01-0{d}" for d in range(1, 6)]
    total = data["total"]
    spend = sum(Decimal(r.cost.input or 0) + Decimal(r.cost.output or 0) for r in receipts)
    prevented = sum(Decimal(r.cost.prevented_estimate or 0) for r in receipts)
    assert (total["spend_usd"], total["prevented_usd"]) == (f"{spend:f}", f"{prevented:f}")
    assert total["unpriced"] == 20  # llama3.2 has no price: unknown, not zero
    assert (data["receipts"], data["duplicates"], data["skipped_lines"]) == (60, 0, 0)
    assert (data["first"], data["last"]) == ("2026-01-01T00:00:00Z", "2026-01-05T00:00:59Z")


def test_money_is_summed_as_decimal_not_float() -> None:
    ledger = Ledger(HmacSigner(bytes(32), key_id="r"))
    lines = [
        ledger.seal(
            receipt_fields(cost={**receipt_fields()["cost"], "input": "0.1", "output": a})
        ).to_json()
        for a in ("0.2", "0.0000001")
    ]
    summary = summarize(lines)
    assert 0.1 + 0.2 != 0.3  # what a float total would get wrong
    assert summary.total.spend == Decimal("0.4000001")
    assert summary.to_json()["total"]["spend_usd"] == "0.4000001"  # no exponent notation
    assert all(type(b.spend) is Decimal for b in summary.by_model.values())


def test_loki_and_otlp_exports_of_the_same_receipts_count_once(ledger_file, tmp_path) -> None:
    path, receipts = ledger_file
    loki = tmp_path / "loki.jsonl"  # `logcli query --output jsonl`: the receipt under "line"
    loki.write_text("".join(json.dumps({"line": r.to_json()}) + "\n" for r in receipts[:30]))
    otlp = tmp_path / "otlp.json"  # the Collector's file exporter: one OTLP/JSON object a line
    records = [{"body": _any_value(r.to_dict())} for r in receipts[30:]]
    otlp.write_text(json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}))
    alone = summarize_files([str(loki), str(otlp)])
    assert alone.to_json() == summarize_files([str(path)]).to_json()
    both = summarize_files([str(path), str(loki), str(otlp)])
    assert (both.total.streams, both.duplicates) == (60, 60)
    assert both.total.spend == alone.total.spend


def test_lines_without_receipts_are_reported_one_by_one_and_exit_1(
    ledger_file, tmp_path, capsys
) -> None:
    path, _ = ledger_file
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_text('not json\n{"message": "hello"}\n\n' + path.read_text())
    assert main(["report", str(noisy)]) == 1  # bad input, but the rest is still summarized
    out, err = capsys.readouterr()
    assert "60 stream(s)" in out
    assert f"{noisy}:1: the line is not valid JSON" in err
    assert f"{noisy}:2: the line holds no receipt" in err
    assert "2 bad line(s) or receipt(s) skipped" in err
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2


def test_terminal_summary_shows_totals_and_tables(ledger_file, capsys) -> None:
    path, _ = ledger_file
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("By model", "By stop reason", "By day (UTC)", "gpt-4o", "budget_exceeded"):
        assert text in out
    assert "2026-01-05" in out
    assert "20 stream(s) had no known price" in out


def test_long_inputs_show_a_progress_bar(ledger_file) -> None:
    path, _ = ledger_file
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=100)
    summary = summarize_files([str(path)], progress=console, progress_lines=10)
    assert summary.total.streams == 60
    assert "reading receipts" in shown.getvalue()
    quiet = io.StringIO()
    summarize_files([str(path)], progress=Console(file=quiet, force_terminal=True))
    assert quiet.getvalue() == ""  # 60 lines: below the default threshold


def test_html_is_self_contained_and_escapes_receipt_text() -> None:
    receipts = make_receipts(12)
    ledger = Ledger(HmacSigner(bytes(32), key_id="r"))
    receipts.append(ledger.seal(receipt_fields(model="<script>alert(1)</script>")))
    summary = Summary()
    for r in receipts:
        summary.add(r)
    page = render_html(summary, "Spend & co")
    assert page.count("<svg") == 3
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "Spend &amp; co" in page
    for external in ("http://", "https://", "src=", "@import", "url("):
        assert external not in page


# ----------------------------------------------------------------------------- Chromium
@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed with apt only when missing and CI=true, else skipped."""
    path = shutil.which("chromium")
    if path is None and os.environ.get("CI") == "true":
        subprocess.run(
            ["sh", "-c", "apt-get update -qq && apt-get install -y -qq chromium"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
            capture_output=True,
            timeout=900,
        )
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian chromium is not installed (this test installs it only when CI=true)")
    return path


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of a non-interlaced 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i] for i in range(0, stride) if i % bpp < 3) for r in rows]


@pytest.mark.timeout(960)  # the first run on CI may install chromium; the test takes ~3 s
def test_html_report_renders_its_charts_in_headless_chromium(
    chromium: str, ledger_file: tuple[Path, list[Receipt]], tmp_path: Path
) -> None:
    browser = chromium
    path, _ = ledger_file
    html, png = tmp_path / "report.html", tmp_path / "report.png"
    assert main(["report", str(path), "--html", str(html), "--json"]) == 0
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={png}",
            "--window-size=1200,1600",
            html.as_uri(),
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert png.exists(), "chromium wrote no screenshot"
    width, height, rows = png_pixels(png.read_bytes())
    assert (width, height) == (1200, 1600)
    colors: Counter[bytes] = Counter()
    for row in rows[::2]:
        colors.update(row[i : i + 3] for i in range(0, len(row), 6))
    # The three chart colors really are on the page, each over a visible area.
    for name, hex_color in (
        ("spend", SPEND),
        ("undelivered", UNDELIVERED),
        ("prevented", PREVENTED),
    ):
        assert colors[bytes.fromhex(hex_color[1:])] > 200, f"no {name} bars in the screenshot"
    if os.environ.get("STREAMGUARD_KEEP_SCREENSHOT"):
        shutil.copy(png, os.environ["STREAMGUARD_KEEP_SCREENSHOT"])


def _any_value(value: Any) -> dict[str, Any]:
    """A JSON value as an OTLP/JSON AnyValue (ints as strings, as OTLP/JSON writes int64)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, dict):
        return {
            "kvlistValue": {
                "values": [{"key": k, "value": _any_value(v)} for k, v in value.items()]
            }
        }
    return {"arrayValue": {"values": [_any_value(v) for v in value]}}
