"""``redis_server()``: a real, throw-away ``redis-server`` on a free loopback port.

For tests and benchmarks of shared budgets and cross-process cancel (Debian's
``redis-server``; ``make system-deps`` installs it)::

    with redis_server() as url:
        streamguard.instrument(redis_url=url, budgets=[...])
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

__all__ = ["RedisServerMissing", "redis_server"]


class RedisServerMissing(RuntimeError):
    """No ``redis-server`` binary on PATH."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str]:
    """Start ``redis-server`` (no persistence, loopback only); yield its URL; stop it after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing("redis-server is not installed (Debian package redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="streamguard-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"redis-server did not start on port {port}") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)
