"""``python -m llama_cpp.server`` with one log line per generated token.

llama.cpp logs a completion's timings only when it ends normally (``llama_perf_context_print``),
never for a completion abandoned half-way, which is exactly the case under test. So this
launcher adds one stderr line per sampled token, stamped with the system-wide monotonic clock
(the same clock as the test's ``time.monotonic_ns()``), and one per completion request. It
changes nothing else: same server module, same arguments, same sampling.

    streamguard-e2e request <monotonic_ns>
    streamguard-e2e token <monotonic_ns>
"""

from __future__ import annotations

import functools
import runpy
import sys
import time
from typing import Any

import llama_cpp

PREFIX = "streamguard-e2e"


def _log(event: str) -> None:
    print(f"{PREFIX} {event} {time.monotonic_ns()}", file=sys.stderr, flush=True)


def _hook() -> None:
    sample = llama_cpp.Llama.sample
    create_completion = llama_cpp.Llama.create_completion

    @functools.wraps(sample)
    def logged_sample(self: llama_cpp.Llama, *args: Any, **kwargs: Any) -> Any:
        token = sample(self, *args, **kwargs)
        _log("token")
        return token

    # Chat completions go through create_completion too (the chat handlers call it).
    @functools.wraps(create_completion)
    def logged_completion(self: llama_cpp.Llama, *args: Any, **kwargs: Any) -> Any:
        _log("request")
        return create_completion(self, *args, **kwargs)

    llama_cpp.Llama.sample = logged_sample  # type: ignore[method-assign]
    llama_cpp.Llama.create_completion = logged_completion  # type: ignore[method-assign]


if __name__ == "__main__":
    _hook()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
