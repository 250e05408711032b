"""A real ``llama_cpp.server`` on loopback, and what it says about the tokens it generated.

The server runs in its own process (``_server.py``: the stock server plus one stderr line per
sampled token). This module reads that log as it is written and answers, on the test's own
monotonic clock: how many tokens the engine sampled after an instant, when it went quiet, and
how much CPU time the server process used (``/proc/<pid>/stat``), an independent witness that
it stopped computing.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

__all__ = ["LlamaServer", "free_port"]

LAUNCHER = Path(__file__).with_name("_server.py")
EVENT = re.compile(r"^streamguard-e2e (token|request) (\d+)$")
# llama.cpp's own per-completion summary, printed when a completion ends normally.
PERF_EVAL = re.compile(r"eval time =\s*([\d.]+) ms /\s*(\d+) runs")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class ServerLog:
    tokens: list[int] = dataclasses.field(default_factory=list)  # monotonic ns of each token
    requests: list[int] = dataclasses.field(default_factory=list)
    perf_eval_runs: list[int] = dataclasses.field(default_factory=list)
    lines: list[str] = dataclasses.field(default_factory=list)


class LlamaServer:
    """``llama_cpp.server`` serving ``model`` on 127.0.0.1 with one inference thread."""

    def __init__(self, model: Path, log_path: Path, *, n_ctx: int = 512) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        self._log = ServerLog()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        args = [
            sys.executable,
            str(LAUNCHER),
            "--model",
            str(model),
            "--model_alias",
            "random-llama",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(n_ctx),
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            # The default (True) ends a running completion when the next request arrives: a
            # stream leaked by one scenario would be cut short by the next one's request, and
            # what it would have cost could not be measured. Off, each leaked completion runs on
            # (to max_tokens) exactly as it would on a server with spare capacity.
            "--interrupt_requests",
            "False",
            "--verbose",
            "True",  # llama.cpp's own timings (llama_perf_context_print) in the log
            "--seed",
            "1",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self._file: IO[str] = log_path.open("w")
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self._reader = threading.Thread(target=self._read, name="llama-server-log", daemon=True)
        self._reader.start()
        self._cpu: list[tuple[int, float]] = []  # (monotonic ns, CPU seconds), every 10 ms
        self._stopping = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="llama-server-cpu", daemon=True)
        self._sampler.start()
        self._wait_ready(120.0)

    # ------------------------------------------------------------------ process and log
    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            self._file.write(raw)
            with self._changed:
                if m := EVENT.match(line):
                    kind, ns = m.group(1), int(m.group(2))
                    (self._log.tokens if kind == "token" else self._log.requests).append(ns)
                else:
                    self._log.lines.append(line)
                    if m := PERF_EVAL.search(line):
                        self._log.perf_eval_runs.append(int(m.group(2)))
                self._changed.notify_all()
        self._file.flush()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {self.process.returncode}; "
                    f"see {self.log_path}:\n" + "\n".join(self._log.lines[-30:])
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout} s")

    def _sample(self) -> None:
        while not self._stopping.wait(0.01):
            try:
                reading = (time.monotonic_ns(), self.cpu_seconds())
            except (OSError, IndexError):
                return  # the process is gone
            with self._lock:
                self._cpu.append(reading)

    def stop(self) -> None:
        self._stopping.set()
        self._sampler.join(5)
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._file.close()

    # ----------------------------------------------------------------------- readings
    def token_count(self) -> int:
        with self._lock:
            return len(self._log.tokens)

    def tokens_since(self, index: int) -> list[int]:
        """Timestamps of the tokens logged after the first ``index`` ones."""
        with self._lock:
            return self._log.tokens[index:]

    def requests_since(self, t_ns: int) -> int:
        with self._lock:
            return sum(1 for ns in self._log.requests if ns >= t_ns)

    def perf_eval_runs(self) -> list[int]:
        with self._lock:
            return list(self._log.perf_eval_runs)

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 60.0) -> int:
        """Wait until no token was sampled for ``quiet`` seconds; returns the token count.

        A completion samples a token every few tens of milliseconds, so ``quiet`` seconds
        without one means none is being generated (a leaked one runs on to max_tokens first).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                last = self._log.tokens[-1] if self._log.tokens else 0
                idle = (time.monotonic_ns() - last) / 1e9
                if idle >= quiet:
                    return len(self._log.tokens)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server was still generating after {timeout} s")
                self._changed.wait(quiet - idle)

    def cpu_at(self, t_ns: int) -> float:
        """Server CPU seconds as sampled at ``t_ns`` (the last sample taken by then)."""
        with self._lock:
            i = bisect.bisect_right(self._cpu, (t_ns, float("inf")))
            if not self._cpu:
                return 0.0
            return self._cpu[max(i - 1, 0)][1]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
