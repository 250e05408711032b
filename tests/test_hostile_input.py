"""``streamguard report`` and ``streamguard verify`` treat every receipt field and every input
line as untrusted: no markup, no escape sequences reach the terminal, JSON stays valid, HTML
stays escaped, and each bad line is one clear error (file:line: why) with exit status 1, never
a traceback, in bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamguard._receipts._untrusted import numbered_lines, terminal_safe
from streamguard._receipts.chain import Ledger
from streamguard._receipts.signing import HmacSigner
from streamguard.testing.sinks import receipt_fields

SECRET = bytes(range(32))
HEX = SECRET.hex()
HOSTILE_MODELS = [
    "[/]",
    "[link=https://evil.example/]click me[/link]",
    "[bold red]FAKE TOTAL $0[/]",
    "\x1b]8;;https://evil.example/\x1b\\osc8 link\x1b]8;;\x1b\\",
    "\x1b[2J\x1b[Hcleared",
    "title\x1b]0;pwned\x07",
    "bidi\u202eevil",
    "c1\x9b31mred",
    "<script>alert(1)</script>",
]
# What must never appear raw in terminal output (ESC starts ANSI/OSC; rich would turn [link=]
# markup into an OSC-8 hyperlink; U+202E reverses text; 0x9b is the one-byte CSI).
RAW = ["\x1b]8", "\x1b[2J", "\x1b]0;", "\u202e", "\x9b", "\x07"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamguard.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture
def hostile_ledger(tmp_path: Path) -> Path:
    ledger = Ledger(HmacSigner(SECRET, key_id="k"))
    path = tmp_path / "hostile.jsonl"
    with path.open("w") as f:
        for model in HOSTILE_MODELS:
            fields = receipt_fields(
                model=model,
                attributes={"tenant": "\x1b[31m[link=x]"},
                detail="\x1b[2Jdetail [/]",
            )
            f.write(ledger.seal(fields).to_json() + "\n")
    return path


def test_terminal_safe_escapes_every_non_printable_character() -> None:
    assert terminal_safe("plain [/] text") == "plain [/] text"
    assert terminal_safe("a\x1b[31mb\u202ec\x9bd\te\n") == "a\\x1b[31mb\\u202ec\\x9bd\\x09e\\x0a"


def test_report_terminal_shows_hostile_names_literally_and_sends_no_escape_sequences(
    hostile_ledger: Path,
) -> None:
    # A colour terminal: rich emits its own styling, so only the hostile sequences are checked.
    result = _cli("report", str(hostile_ledger), env={"FORCE_COLOR": "1", "COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for raw in RAW:
        assert raw not in result.stdout, repr(raw)
    for shown in ("[/]", "[link=https://evil.example/]click me[/link]", "[bold red]FAKE TOTAL"):
        assert shown in result.stdout
    assert "\\x1b]8;;https://evil.example/" in result.stdout
    assert "bidi\\u202eevil" in result.stdout


def test_report_json_round_trips_hostile_names_as_valid_ascii_json(hostile_ledger: Path) -> None:
    result = _cli("report", str(hostile_ledger), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()
    data = json.loads(result.stdout)
    assert sorted(data["by_model"]) == sorted(HOSTILE_MODELS)
    assert data["receipts"] == len(HOSTILE_MODELS)


def test_report_html_is_written_and_escapes_hostile_names(
    hostile_ledger: Path, tmp_path: Path
) -> None:
    html = tmp_path / "report.html"
    result = _cli("report", str(hostile_ledger), "--html", str(html))
    assert result.returncode == 0, result.stderr
    page = html.read_text()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "[link=https://evil.example/]click me[/link]" in page


def test_verify_prints_hostile_fields_escaped(hostile_ledger: Path, tmp_path: Path) -> None:
    # Break the chain at a receipt whose id is hostile-looking text, and name a hostile file.
    lines = hostile_ledger.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["receipt_id"] = "\x1b]8;;https://evil.example/\x1b\\[/]"
    weird = tmp_path / "name\x1b[2J[link=x].jsonl"
    weird.write_text("\n".join([lines[0], json.dumps(bad), *lines[3:]]) + "\n")
    result = _cli("verify", "--hmac-key", HEX, str(weird), env={"FORCE_COLOR": "1"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    for raw in RAW:
        assert raw not in result.stdout + result.stderr, repr(raw)
    assert "name\\x1b[2J[link=x].jsonl:2: receipt \\x1b]8;;https://evil.example/\\x1b\\[/]" in (
        result.stdout
    )


UTF8_PREFIX = b'{"schema": "streamguard.receipt/1", "model": "'


@pytest.fixture
def bad_lines(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """Good receipts around one of each kind of bad line (line number -> expected reason)."""
    ledger = Ledger(HmacSigner(SECRET, key_id="k"))
    first, last = (ledger.seal(receipt_fields(model="m")).to_json() for _ in range(2))
    path = tmp_path / "bad.jsonl"
    with path.open("wb") as f:
        f.write(first.encode() + b"\n")
        f.write(b'{"schema": "streamguard.receipt/1", "seq": ' + b"9" * 5000 + b"}\n")
        f.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
        f.write(UTF8_PREFIX + b'\xff\xfe"}\n')
        f.write(b'{"model": "' + b"x" * (100 * 1024 * 1024) + b'"}\n')  # 100 MiB
        f.write(b'{"message": "not a receipt"}\n')
        f.write(b"{truncated\n")
        huge = json.loads(first)
        huge["tokens"]["produced"] = 10**4000  # JSON reads it; no receipt may hold it
        f.write(json.dumps(huge).encode() + b"\n")
        long = json.loads(first)
        long["outcome"] = "x" * 1_000_000
        f.write(json.dumps(long).encode() + b"\n")
        f.write(last.encode() + b"\n")
    expected = {
        2: "more than 4300 digits",
        3: "nests JSON too deeply",
        4: f"not valid UTF-8 (byte {len(UTF8_PREFIX) + 1} of the line)",
        5: "bytes long, over the limit of 16,777,216 bytes",
        6: "the line holds no receipt",
        7: "not valid JSON",
        8: "tokens.produced must be between 0 and 2**53-1, got an integer of 13288 bits",
        9: "got 'xxxxxxxx",
    }
    return path, expected


_MEASURED = """
import resource, sys
from streamguard.cli import main
code = main(sys.argv[1:])
sys.stderr.write(f"\\nmaxrss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n")
sys.exit(code)
"""


def _measured(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI in its own process; also return its peak RSS in MiB."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURED, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = result.stderr.rstrip().rsplit("\n", 1)[-1]
    assert last.startswith("maxrss_kb="), result.stderr[-2000:]
    return result, int(last.removeprefix("maxrss_kb=")) // 1024


def _baseline_mib(tmp_path: Path) -> int:
    empty = tmp_path / "one.jsonl"
    ledger = Ledger(HmacSigner(SECRET, key_id="k"))
    empty.write_text(ledger.seal(receipt_fields()).to_json() + "\n")
    return _measured("verify", "--hmac-key", HEX, str(empty))[1]


@pytest.mark.parametrize("command", ["verify", "report", "report-json"])
def test_each_bad_line_is_one_clear_error_with_exit_1_in_bounded_memory(
    bad_lines: tuple[Path, dict[int, str]], tmp_path: Path, command: str
) -> None:
    path, expected = bad_lines
    args = {
        "verify": ["verify", "--hmac-key", HEX, str(path)],
        "report": ["report", str(path), "--html", str(tmp_path / "bad.html")],
        "report-json": ["report", str(path), "--json"],
    }[command]
    result, peak_mib = _measured(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    for number, reason in expected.items():
        (line,) = [text for text in output.splitlines() if f"{path}:{number}:" in text]
        assert reason in line, line
        assert len(line) < 400, line[:1000]  # one clear line, not the input echoed back
    if command == "verify":
        assert "2 ok" in result.stdout
    elif command == "report-json":
        data = json.loads(result.stdout)
        assert (data["receipts"], data["skipped_lines"]) == (2, len(expected))
    else:
        assert "2 stream(s)" in result.stdout
        assert "2 receipt(s) finalised" in (tmp_path / "bad.html").read_text()  # still written
    # A 100 MiB line is read through, never held: peak memory stays near an ordinary run's.
    assert peak_mib < _baseline_mib(tmp_path) + 60, peak_mib


def test_numbered_lines_bounds_a_line_and_continues_after_it(tmp_path: Path) -> None:
    path = tmp_path / "lines"
    path.write_bytes(b"short\n" + b"y" * 50 + b"\n" + b"\xffbad\n" + b"last")
    with path.open("rb") as f:
        got = list(numbered_lines(f, max_bytes=20))
    assert got[0] == (1, "short\n", None)
    assert got[1][:2] == (2, None) and "51 bytes long" in (got[1][2] or "")
    assert got[2][:2] == (3, None) and "not valid UTF-8 (byte 1" in (got[2][2] or "")
    assert got[3] == (4, "last", None)
