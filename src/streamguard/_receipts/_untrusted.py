"""Reading untrusted receipt exports: bounded lines, strict UTF-8, terminal-safe text.

Everything ``streamguard verify`` and ``streamguard report`` read comes from files anyone may
have written. Guarantees:

- ``numbered_lines`` never holds more than ``max_bytes`` of one line in memory: a longer line is
  read through in chunks, counted and reported, not parsed. A line that is not UTF-8 is
  reported with the offset of its first bad byte, never silently "replaced" (a replaced
  character would turn an intact receipt into an "edited" one).
- ``terminal_safe`` returns text with every non-printable character (C0/C1 controls such as
  ESC, which starts ANSI and OSC-8 hyperlink sequences, DEL, bidi overrides, zero-width and
  other format characters, line and paragraph separators) written as a Python-style escape
  (``\\x1b``, ``\\u202e``), so a receipt field cannot move the cursor, recolour, retitle or
  hyperlink a terminal. It does not touch rich markup: print it as ``rich.text.Text``, never as
  a markup string.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["MAX_LINE_BYTES", "numbered_lines", "terminal_safe"]

MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest line parsed (16 MiB): a receipt is ~1-2 KB; an OTLP/JSON export line holding a
whole batch of log records stays well below this."""

_CHUNK = 1 << 20


def numbered_lines(
    stream: BinaryIO, max_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` per line, or ``(line number, None, why it was skipped)``.

    Numbers are 1-based. Blank lines are yielded too (the caller skips them).
    """
    number = 0
    while True:
        raw = stream.readline(max_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while True:  # read through the rest of the line without keeping it
                rest = stream.readline(_CHUNK)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield (
                number,
                None,
                f"the line is {size:,} bytes long, over the limit of {max_bytes:,} bytes for "
                "one line, so it was not read (a receipt is a few KB)",
            )
            continue
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            yield (
                number,
                None,
                f"the line is not valid UTF-8 (byte {exc.start + 1} of the line), so it was "
                "corrupted or is not a receipt export",
            )


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character escaped (see the module docstring).

    >>> terminal_safe("red\\x1b[31m")
    'red\\\\x1b[31m'
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
