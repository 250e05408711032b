"""7. Money and policy overhead per chunk: accounting, budgets (in-memory and Redis) and
streaming policies, each against the same guarded stream with none of them, in the same run.

200k chunks of text through ``GuardedIterator`` (provider openai, model gpt-4o, so budgets have
a price). The budget is large enough never to run out; the keyword policy never blocks.
Budget charges are per chunk against the stream's own reservation, so the Redis store is hit
twice per stream (reserve, settle), not per chunk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from benchmarks import _common as c

CHUNKS = 200_000


def _gen(n: int) -> Iterator[str]:
    for _ in range(n):
        yield " token"


def _noop() -> None:
    return None


def _run(n: int, rt: Any) -> float:
    from streamguard import GuardedIterator

    t0 = time.perf_counter_ns()
    for _ in GuardedIterator(
        _gen(n), close=_noop, runtime=rt, provider="openai", model="gpt-4o", max_tokens=n * 2
    ):
        pass
    return (time.perf_counter_ns() - t0) / n


def _runtime(**extra: Any) -> Any:
    from streamguard._config import Options
    from streamguard._runtime import Runtime
    from streamguard.testing.sinks import InMemoryReceiptSink

    opts = Options.resolve({"stall_timeout": None}, environ={})
    return Runtime(opts, signer=c.make_signer("hmac"), sinks=[InMemoryReceiptSink()], **extra)


@contextlib.contextmanager
def _redis() -> Iterator[str | None]:
    from streamguard.testing.redis_server import RedisServerMissing, redis_server

    try:
        with redis_server() as url:
            yield url
    except RedisServerMissing:
        yield None


def run() -> dict[str, Any]:
    from streamguard import Budget, StreamPolicy, Verdict
    from streamguard._money.budget import InMemoryBudgetStore

    c.setup_otel("noop")
    n = CHUNKS // 10 if c.QUICK else CHUNKS
    reps = 3 if c.QUICK else 7

    def keyword(text: str) -> Verdict:
        # An incremental checker looks at the new tail: a full scan of the accumulated text on
        # every chunk would measure the checker, not StreamGuard.
        return Verdict.block("keyword", "found") if "forbidden" in text[-64:] else Verdict.allow()

    big = Budget(limit_usd="1000000", name="bench")
    with _redis() as redis_url:
        runtimes: dict[str, Any] = {
            "none": _runtime(),
            "budget_memory": _runtime(budgets=[big], budget_store=InMemoryBudgetStore()),
            "policy_continuous": _runtime(policies=[StreamPolicy(keyword, strategy="continuous")]),
            "policy_periodic": _runtime(
                policies=[StreamPolicy(keyword, strategy="periodic", every_chars=500)]
            ),
        }
        if redis_url is not None:
            from streamguard._money.redis_store import RedisBudgetStore

            runtimes["budget_redis"] = _runtime(
                budgets=[big], budget_store=RedisBudgetStore(redis_url)
            )
        results = c.interleave({k: (lambda rt=rt: _run(n, rt)) for k, rt in runtimes.items()}, reps)
        for rt in runtimes.values():
            rt.shutdown(timeout=1.0)
    labels = {
        "budget_memory": "budget, in-memory store",
        "budget_redis": "budget, Redis store (real redis-server)",
        "policy_continuous": "keyword policy, continuous (a check per chunk)",
        "policy_periodic": "keyword policy, periodic every 500 chars (hold-back)",
    }
    figures = [
        c.figure(
            f"money.{key}",
            f"Per chunk: {label}",
            "ns/chunk",
            baseline_name="guarded, no budget or policy",
            baseline=results["none"],
            name=label,
            values=results[key],
            note=f"{n:,} chunks per run, OTel no-op API",
        )
        for key, label in labels.items()
        if key in results
    ]
    return {"figures": figures}
