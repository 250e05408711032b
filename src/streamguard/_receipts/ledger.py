"""The local append-only ledger: one receipt per line of JSON, fsynced.

It keeps receipts when the OTLP pipeline is down, and is what ``streamguard verify`` reads.

Guarantees of ``JsonlLedgerSink``
    - Each ``emit`` writes exactly one complete line (``receipt.to_json()`` + ``"\\n"``) with a
      single ``O_APPEND`` write under an exclusive ``flock`` of the file, so lines from threads,
      and from processes sharing the file (forked workers, each with its own chain), never
      interleave; with ``fsync=True`` the line is on disk when ``emit`` returns.
    - Lines appear in ``emit``/``append`` order. The runtime writes it inside the chain's
      critical section (``in_chain_order``), so the file is in chain order under any number of
      threads.
    - ``append`` writes the line without the fsync; ``sync()`` then fsyncs every line appended
      since the last one. The runtime's receipt writer appends a batch of receipts and syncs
      once per batch (see ``_receipts.writer``); ``emit`` is ``append`` + ``sync``.
    - A new file is created with mode 0600 (owner read/write only, whatever the umask): receipts
      name models, tenants and spend. An existing file keeps its mode.
    - After ``os.fork()`` the child re-opens the file (its own open file description, so the
      ``flock`` also excludes the parent) and gets a fresh thread lock.
    - Errors (disk full, permissions, emitting after ``close``) raise ``OSError`` to the caller;
      a failed emit never leaves a partial line behind it that a later line would run into.
    - ``close()`` is idempotent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: O_APPEND alone orders the lines
    fcntl = None  # type: ignore[assignment]

from streamguard._receipts.model import Receipt

__all__ = ["JsonlLedgerSink"]


class JsonlLedgerSink:
    """Append receipts to ``path`` as JSON lines; the parent directory is created if needed.

    >>> import tempfile, pathlib
    >>> sink = JsonlLedgerSink(pathlib.Path(tempfile.mkdtemp()) / "ledger.jsonl", fsync=False)
    >>> sink.close()
    """

    in_chain_order = True
    """The runtime writes this sink inside the chain's critical section (see ``Ledger``)."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._path = os.fspath(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._dirty = False
        parent = os.path.dirname(self._path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._fd: int | None = self._open()

    def _open(self) -> int:
        # A raw fd with O_APPEND: every write lands at the current end of file atomically,
        # which a buffered text file object does not promise.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        return os.open(self._path, flags, 0o600)

    @property
    def path(self) -> str:
        return self._path

    def emit(self, receipt: Receipt) -> None:
        """Append one line for ``receipt`` (and fsync it unless ``fsync=False``)."""
        self.append(receipt)
        self.sync()

    def sync(self) -> None:
        """fsync the lines appended since the last sync (nothing with ``fsync=False``)."""
        with self._lock:
            fd, dirty, self._dirty = self._fd, self._dirty, False
            if dirty and fd is not None and self._fsync:
                os.fsync(fd)

    def append(self, receipt: Receipt) -> None:
        """Write one line for ``receipt``; ``sync()`` makes it durable."""
        line = (receipt.to_json() + "\n").encode("utf-8")
        with self._lock:
            fd = self._fd
            if fd is None:
                raise OSError(errno.EBADF, "the receipt ledger is closed", self._path)
            # The file lock keeps another process's line out of a short write's repair.
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                written = os.write(fd, line)
                self._dirty = True
                if written != len(line):
                    # Short write (e.g. disk full mid-line): end the fragment so the next
                    # receipt starts on a line of its own; verify reports the fragment.
                    os.write(fd, b"\n")
                    raise OSError(
                        errno.EIO,
                        f"short write to the receipt ledger ({written} of {len(line)} bytes)",
                        self._path,
                    )
            finally:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _after_fork_in_child(self) -> None:
        """In a forked child: a fresh lock and an fd of the child's own (see the module doc)."""
        self._lock = threading.Lock()
        inherited, self._fd = self._fd, None
        if inherited is None:
            return
        try:
            self._fd = self._open()
        except OSError:  # keep appending through the inherited fd rather than lose receipts
            self._fd = inherited
            return
        os.close(inherited)  # the child's copy only: the parent's fd stays open

    def close(self) -> None:
        """fsync what was appended and close the file. A second call does nothing."""
        with contextlib.suppress(OSError):  # closing still closes; the lines were written
            self.sync()
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
