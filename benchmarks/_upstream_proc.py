"""``streamguard.testing.Upstream`` in a process of its own, with a small JSON-lines control pipe.

In the benchmark's own process the upstream's server thread would compete for the GIL with the
client under test: a disconnect would be noticed only when the client let go of the GIL (up to
the 5 ms switch interval), which would measure the interpreter, not the guard. A separate
process also lets the server use the second core, as a real model server would be elsewhere.
Record times are ``time.monotonic_ns()``, which on Linux is one clock for every process.

    up = RemoteUpstream(token_interval=0.005).start()
    ... openai.OpenAI(base_url=up.openai_base_url, ...) ...
    record = up.record(1, since_ns=t0)   # waits until request 1 has ended
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent


class RemoteUpstream:
    """Start, query and stop an ``Upstream`` running in a child process."""

    def __init__(self, token_interval: float, default_max_tokens: int = 64) -> None:
        self.token_interval = token_interval
        self.default_max_tokens = default_max_tokens
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> RemoteUpstream:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks._upstream_proc",
                str(self.token_interval),
                str(self.default_max_tokens),
            ],
            cwd=_REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        self.url = self._recv()["url"]
        return self

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def _recv(self) -> dict[str, Any]:
        assert self._proc is not None
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the upstream process ended unexpectedly")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"upstream process: {reply['error']}")
        return reply

    def call(self, **command: Any) -> dict[str, Any]:
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return self._recv()

    def record(self, n: int, since_ns: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        """Request number ``n`` (1-based, since the last reset) once it has ended."""
        record: dict[str, Any] = self.call(op="record", n=n, since_ns=since_ns, timeout=timeout)[
            "record"
        ]
        return record

    def records(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every request since the last reset, each once it has ended (or ``timeout``)."""
        out: list[dict[str, Any]] = self.call(op="records", timeout=timeout)["records"]
        return out

    def reset(self) -> None:
        self.call(op="reset")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                proc.stdin.flush()
            proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def __enter__(self) -> RemoteUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _fields(record: Any, since_ns: int) -> dict[str, Any]:
    return {
        "id": record.id,
        "outcome": record.outcome,
        "started_ns": record.started_ns,
        "disconnected_ns": record.disconnected_ns,
        "finished_ns": record.finished_ns,
        "tokens_generated": record.tokens_generated,
        "tokens_after": record.tokens_after(since_ns) if since_ns else None,
    }


def main() -> None:
    from streamguard.testing import Upstream

    interval, default_max = float(sys.argv[1]), int(sys.argv[2])
    up = Upstream(token_interval=interval, default_max_tokens=default_max).start()

    def reply(payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    reply({"url": up.url})
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            try:
                if op == "stop":
                    break
                if op == "reset":
                    up.reset()
                    reply({"ok": True})
                elif op == "record":
                    n, timeout = command["n"], command["timeout"]
                    record = up.wait_for_requests(n, timeout)[n - 1]
                    record.wait_done(timeout)
                    reply({"record": _fields(record, command["since_ns"])})
                elif op == "records":
                    records = up.requests
                    deadline = time.monotonic() + command["timeout"]
                    for record in records:
                        record.wait_done(max(0.0, deadline - time.monotonic()))
                    reply({"records": [_fields(r, 0) for r in records]})
                else:
                    reply({"error": f"unknown op {op!r}"})
            except Exception as exc:
                reply({"error": repr(exc)})
    finally:
        up.stop()


if __name__ == "__main__":
    main()
