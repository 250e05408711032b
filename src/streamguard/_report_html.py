"""The HTML form of ``streamguard report``: one self-contained page with inline SVG charts.

No script, no stylesheet or font from elsewhere: the page renders offline, from a file, in any
browser (and in CI's headless Chromium). Chart geometry is computed from the ``Decimal`` totals
with integer arithmetic; every number shown comes from the summary unchanged. Every text that
comes from a receipt (model names, reasons) is HTML-escaped.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from html import escape

from streamguard._engine.reasons import StopReason
from streamguard._report import Bucket, Summary, by_spend, money_cell, usd

__all__ = ["render_html"]

SPEND, UNDELIVERED, PREVENTED = "#3b6fd8", "#e8912d", "#2f9e5a"
CATEGORY_COLORS = {
    "completed": "#8a94a6",
    "client": "#3b6fd8",
    "policy": "#c0392b",
    "operator": "#8e44ad",
    "upstream": "#e8912d",
}
WIDTH = 1080
MAX_BARS = 15

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;
color:#1d2330;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:#5b6477;margin-bottom:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 16px;min-width:180px}
.card b{display:block;font-size:22px}.card span{color:#5b6477;font-size:12px}
.chart{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:8px}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}svg .axis{fill:#5b6477}
table{border-collapse:collapse;background:#fff;min-width:60%}
th,td{border:1px solid #dde1e8;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#eef0f4}
.legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;border-radius:2px}
"""


def render_html(summary: Summary, title: str) -> str:
    """The whole report as one HTML document (UTF-8 text)."""
    data = summary.to_json()
    total = summary.total
    outcomes = ", ".join(
        f"{escape(k)} {b.streams}" for k, b in by_spend(summary.by_outcome).items()
    )
    cards = [
        (usd(total.spend), "spend (input + output)"),
        (usd(total.prevented), "prevented spend (estimate)"),
        (usd(total.undelivered), "undelivered spend"),
        (f"{total.streams:,}", f"streams: {outcomes}" if outcomes else "streams"),
        (f"{total.tokens_undelivered:,}", "undelivered tokens"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="sub">{total.streams:,} receipt(s) finalised from {data["first"]} to '
        f"{data['last']} (UTC)."
        + (f" {total.unpriced} stream(s) had no known price." if total.unpriced else "")
        + "</div>",
        '<div class="cards">',
        *(f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for v, k in cards),
        "</div>",
    ]
    if total.streams:
        parts += [
            "<h2>Spend per day (UTC)</h2>",
            _legend(),
            f'<div class="chart">{_days_chart(dict(sorted(summary.by_day.items())))}</div>',
            "<h2>Spend by model</h2>",
            _legend(),
            f'<div class="chart">{_money_bars(by_spend(summary.by_model))}</div>',
            "<h2>Streams by stop reason</h2>",
            f'<div class="chart">{_reason_bars(summary.by_reason)}</div>',
            _table("By model", "model", by_spend(summary.by_model)),
            _table("By stop reason", "reason", by_spend(summary.by_reason)),
            _table("By day (UTC)", "day", dict(sorted(summary.by_day.items()))),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _scale(value: Decimal | int, top: Decimal | int, length: int) -> int:
    """``value / top * length`` rounded to a whole pixel; 0 when ``top`` is 0."""
    if not top:
        return 0
    return int((Decimal(value) * length / Decimal(top)).to_integral_value(ROUND_HALF_UP))


def _legend() -> str:
    keys = (("spend", SPEND), ("undelivered", UNDELIVERED), ("prevented (estimate)", PREVENTED))
    items = "".join(f'<i style="background:{c}"></i>{name}' for name, c in keys)
    return f'<div class="legend">{items}</div>'


def _days_chart(days: dict[str, Bucket]) -> str:
    """Grouped vertical bars per day: spend, undelivered, prevented."""
    height, left, bottom, top_pad = 260, 90, 40, 16
    plot_w, plot_h = WIDTH - left - 16, height - bottom - top_pad
    top = max(max(b.spend, b.undelivered, b.prevented) for b in days.values())
    out = [f'<svg width="{WIDTH}" height="{height}" role="img" aria-label="spend per day">']
    for i in range(5):  # grid lines and y labels at 0, 1/4, ... of the top value
        y = top_pad + plot_h - _scale(i, 4, plot_h)
        out.append(f'<line x1="{left}" x2="{WIDTH - 16}" y1="{y}" y2="{y}" stroke="#e4e7ec"/>')
        label = usd(top * i / 4)
        out.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4}" text-anchor="end">{label}</text>'
        )
    group = plot_w // max(1, len(days))
    bar = max(1, min(40, group * 3 // 12))
    every = max(1, len(days) // 12)  # at most ~12 date labels
    for i, (day, b) in enumerate(days.items()):
        x0 = left + i * group + (group - 3 * bar) // 2
        for j, (value, color, what) in enumerate(
            (
                (b.spend, SPEND, "spend"),
                (b.undelivered, UNDELIVERED, "undelivered"),
                (b.prevented, PREVENTED, "prevented"),
            )
        ):
            h = _scale(value, top, plot_h)
            x, y = x0 + j * bar, top_pad + plot_h - h
            out.append(
                f'<rect x="{x}" y="{y}" width="{bar - 1}" height="{h}" fill="{color}">'
                f"<title>{day} {what}: {usd(value)}</title></rect>"
            )
        if i % every == 0:
            cx = left + i * group + group // 2
            out.append(
                f'<text class="axis" x="{cx}" y="{height - 20}" text-anchor="middle">{day}</text>'
            )
    out.append("</svg>")
    return "".join(out)


Bar = tuple[Decimal | int, str, str, int]  # value, color, tooltip, lane (0 or 1)


def _hbars(rows: list[tuple[str, list[Bar], str]]) -> str:
    """Horizontal bars: per row a label, bars in up to two lanes, and a caption.

    Bars are drawn in order, so a later bar in the same lane overlays an earlier one.
    """
    label_w, row_h, bar_h = 220, 34, 12
    plot_w = WIDTH - label_w - 190
    top = max((bar[0] for _, bars, _ in rows for bar in bars), default=0)
    out = [f'<svg width="{WIDTH}" height="{row_h * len(rows) + 10}" role="img">']
    for i, (label, bars, caption) in enumerate(rows):
        y = 8 + i * row_h
        out.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{escape(label)}</text>')
        for value, color, tip, lane in bars:
            w = max(1, _scale(value, top, plot_w)) if value else 0
            out.append(
                f'<rect x="{label_w}" y="{y + lane * (bar_h + 2)}" width="{w}" height="{bar_h}" '
                f'fill="{color}"><title>{escape(label)} {escape(tip)}</title></rect>'
            )
        x = label_w + plot_w + 8
        out.append(f'<text class="axis" x="{x}" y="{y + 14}">{escape(caption)}</text>')
    out.append("</svg>")
    return "".join(out)


def _money_bars(buckets: dict[str, Bucket]) -> str:
    """Per model: spend with its undelivered part drawn over it, and prevented below."""
    rows = []
    for name, b in list(buckets.items())[:MAX_BARS]:
        bars: list[Bar] = [
            (b.spend, SPEND, f"spend {usd(b.spend)}", 0),
            (b.undelivered, UNDELIVERED, f"undelivered {usd(b.undelivered)}", 0),
            (b.prevented, PREVENTED, f"prevented {usd(b.prevented)}", 1),
        ]
        caption = f"{usd(b.spend)} (undelivered {usd(b.undelivered)})"
        if b.unpriced == b.streams:
            caption = f"no known price ({b.streams:,} stream(s))"
        rows.append((name, bars, caption))
    return _hbars(rows)


def _reason_bars(buckets: dict[str, Bucket]) -> str:
    ordered = sorted(buckets.items(), key=lambda kv: (-kv[1].streams, kv[0]))[:MAX_BARS]
    rows = []
    for name, b in ordered:
        color = CATEGORY_COLORS[_category(name)]
        bars: list[Bar] = [(b.streams, color, f"{b.streams} stream(s)", 0)]
        rows.append((name, bars, f"{b.streams:,} stream(s), {usd(b.spend)}"))
    return _hbars(rows)


def _category(reason: str) -> str:
    try:
        category = StopReason(reason).category
    except ValueError:
        return "completed"
    return "completed" if category is None else str(category)


def _table(title: str, key: str, buckets: dict[str, Bucket]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (key, "streams", "spend", "prevented", "undelivered", "tokens out", "undeliv. tok")
    )
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{b.streams:,}</td><td>{money_cell(b, b.spend)}</td>"
        f"<td>{money_cell(b, b.prevented)}</td><td>{money_cell(b, b.undelivered)}</td>"
        f"<td>{b.tokens_produced:,}</td><td>{b.tokens_undelivered:,}</td></tr>"
        for name, b in buckets.items()
    )
    return f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{rows}</table>"
