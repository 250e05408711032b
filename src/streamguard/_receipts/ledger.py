"""The local append-only ledger: one receipt per line of JSON, fsynced.

It keeps receipts when the OTLP pipeline is down, and is what ``streamguard verify`` reads.

Guarantees of ``JsonlLedgerSink``
    - Each ``emit`` writes exactly one complete line (``receipt.to_json()`` + ``"\\n"``) with a
      single ``O_APPEND`` write, so lines from threads, and from processes sharing the file, do
      not interleave; with ``fsync=True`` the line is on disk when ``emit`` returns.
    - Lines appear in ``emit`` order. Emit in seal order to keep the file in chain order.
    - Errors (disk full, permissions, emitting after ``close``) raise ``OSError`` to the caller;
      a failed emit never leaves a partial line behind it that a later line would run into.
    - ``close()`` is idempotent.
"""

from __future__ import annotations

import errno
import os
import threading
from types import TracebackType

from streamguard._receipts.model import Receipt

__all__ = ["JsonlLedgerSink"]


class JsonlLedgerSink:
    """Append receipts to ``path`` as JSON lines; the parent directory is created if needed.

    >>> import tempfile, pathlib
    >>> sink = JsonlLedgerSink(pathlib.Path(tempfile.mkdtemp()) / "ledger.jsonl", fsync=False)
    >>> sink.close()
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._path = os.fspath(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        parent = os.path.dirname(self._path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        # A raw fd with O_APPEND: every write lands at the current end of file atomically,
        # which a buffered text file object does not promise.
        self._fd: int | None = os.open(
            self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644
        )

    @property
    def path(self) -> str:
        return self._path

    def emit(self, receipt: Receipt) -> None:
        """Append one line for ``receipt`` (and fsync it unless ``fsync=False``)."""
        line = (receipt.to_json() + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise OSError(errno.EBADF, "the receipt ledger is closed", self._path)
            written = os.write(self._fd, line)
            if written != len(line):
                # Short write (e.g. disk full mid-line): end the fragment so the next receipt
                # starts on a line of its own; verify reports the fragment as malformed.
                os.write(self._fd, b"\n")
                raise OSError(
                    errno.EIO,
                    f"short write to the receipt ledger ({written} of {len(line)} bytes)",
                    self._path,
                )
            if self._fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        """Close the file. A second call does nothing."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> JsonlLedgerSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else "open"
        return f"JsonlLedgerSink({self._path!r}, fsync={self._fsync}, {state})"
