"""Budgets: pre-flight rejection, mid-stream stop, concurrency, Redis across processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

import streamguard
from streamguard import Budget, BudgetExceeded
from streamguard._money.budget import InMemoryBudgetStore, StoreUnavailable, to_nano
from streamguard._money.pricing import Pricing
from streamguard._receipts.signing import HmacSigner
from streamguard.testing import Upstream
from streamguard.testing.sinks import InMemoryReceiptSink

MODEL = "gpt-4o"  # $2.50 in / $10 out per MTok in genai-prices
PRICE = Pricing().price("openai", MODEL)
assert PRICE is not None
PROMPT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.002) as up:
        yield up


@pytest.fixture
def sink() -> InMemoryReceiptSink:
    return InMemoryReceiptSink()


def instrument(sink: InMemoryReceiptSink, *budgets: Budget, **kw: object) -> None:
    streamguard.instrument(
        sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"), budgets=budgets, **kw
    )


@pytest.fixture(autouse=True)
def _uninstrument() -> Iterator[None]:
    yield
    streamguard.uninstrument()


def client(up: Upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)


def spend(receipt) -> Decimal:
    return Decimal(receipt.cost.input or 0) + Decimal(receipt.cost.output or 0)


def test_exhausted_budget_rejects_before_any_request(upstream, sink) -> None:
    instrument(sink, Budget(limit_usd="0", name="zero"))
    before = len(upstream.requests)
    c = client(upstream)
    with pytest.raises(BudgetExceeded, match="zero"):
        c.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=100, stream=True)
    c.close()
    time.sleep(0.05)
    assert len(upstream.requests) == before  # the upstream saw nothing
    (r,) = sink.receipts
    assert (r.outcome, r.reason, r.category) == ("rejected", "budget_exceeded", "policy")
    assert r.tokens.produced == 0
    assert r.tokens.prevented_estimate == 100
    assert Decimal(r.cost.prevented_estimate) == 100 * PRICE.output


def test_budget_runs_out_mid_stream_after_the_last_paid_chunk(upstream, sink) -> None:
    # Room for the prompt and about 20 output tokens.
    limit = 2 * PRICE.input + 20 * PRICE.output
    instrument(sink, Budget(limit_usd=limit, name="small"))
    c = client(upstream)
    got = 0
    with pytest.raises(BudgetExceeded):
        for chunk in c.chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=200, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                got += 1
    c.close()
    r = sink.wait_for(1, 2)[0]
    assert (r.outcome, r.reason) == ("cancelled", "budget_exceeded")
    assert r.tokens.committed == got
    assert r.tokens.produced == got + 1  # the unpaid chunk was never handed over
    assert 15 <= got <= 20
    store_spent = streamguard_store_spent(Budget(limit_usd=limit, name="small"))
    assert store_spent <= to_nano(limit) + to_nano(PRICE.output) * 2


def streamguard_store_spent(budget: Budget) -> int:
    from streamguard._runtime import get_runtime

    spent, reserved = get_runtime().budget_store.usage(budget.key({}))
    assert reserved == 0  # every reservation was released
    return spent


def _run_threads(n: int, target) -> None:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_fifty_concurrent_threads_never_overshoot(upstream, sink) -> None:
    limit = Decimal("0.005")  # room for ~500 output tokens; 50 streams want 2500
    instrument(sink, Budget(limit_usd=limit, name="shared"))
    c = client(upstream)
    outcomes: list[str] = []

    def one() -> None:
        try:
            for _ in c.chat.completions.create(
                model=MODEL, messages=PROMPT, max_tokens=50, stream=True
            ):
                pass
            outcomes.append("completed")
        except BudgetExceeded:
            outcomes.append("budget")

    _run_threads(50, one)
    c.close()
    receipts = sink.wait_for(50, 10)
    assert len(receipts) == 50
    total = sum(spend(r) for r in receipts)
    assert total <= limit + PRICE.output * 2  # one chunk ("w100"+ estimates 2 tokens)
    assert "completed" in outcomes
    assert "budget" in outcomes
    assert {r.outcome for r in receipts} <= {"completed", "rejected", "cancelled"}


async def test_fifty_concurrent_async_streams_never_overshoot(upstream, sink) -> None:
    limit = Decimal("0.005")
    instrument(sink, Budget(limit_usd=limit, name="shared-async"))
    c = openai.AsyncOpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)

    async def one() -> str:
        try:
            stream = await c.chat.completions.create(
                model=MODEL, messages=PROMPT, max_tokens=50, stream=True
            )
            async for _ in stream:
                pass
            return "completed"
        except BudgetExceeded:
            return "budget"

    outcomes = await asyncio.gather(*(one() for _ in range(50)))
    await c.close()
    receipts = await sink.wait_for_async(50, 10)
    total = sum(spend(r) for r in receipts)
    assert total <= limit + PRICE.output * 2
    assert set(outcomes) == {"completed", "budget"}


def test_scope_keys_separate_budgets(upstream, sink) -> None:
    budget = Budget(limit_usd="0.0005", scope=("tenant",), name="per-tenant")
    instrument(sink, budget)
    c = client(upstream)
    with streamguard.context(tenant="a"), pytest.raises(BudgetExceeded):
        for _ in c.chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=200, stream=True
        ):
            pass
    with streamguard.context(tenant="b"):
        stream = c.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, stream=True)
        assert sum(1 for _ in stream) > 0
    c.close()
    receipts = sink.wait_for(2, 2)
    assert [r.attributes["tenant"] for r in receipts] == ["a", "b"]
    assert [r.reason for r in receipts] == ["budget_exceeded", "completed"]


def test_per_request_budget_through_limits(upstream, sink) -> None:
    instrument(sink)
    c = client(upstream)
    with (
        streamguard.limits(budget=Budget(limit_usd="0", name="req")),
        pytest.raises(BudgetExceeded),
    ):
        c.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, stream=True)
    stream = c.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, stream=True)
    assert sum(1 for _ in stream) > 0
    c.close()


class DownStore(InMemoryBudgetStore):
    def reserve(self, key: str, amount: int, limit: int, ttl: int | None) -> int:
        raise StoreUnavailable("connection refused")


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_unreachable_store_fails_open_or_closed(upstream, sink, mode, caplog) -> None:
    instrument(sink, Budget(limit_usd="1", on_store_error=mode, store=DownStore()))
    c = client(upstream)
    if mode == "open":
        stream = c.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, stream=True)
        assert sum(1 for _ in stream) > 0
    else:
        with pytest.raises(BudgetExceeded):
            c.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, stream=True)
    c.close()
    assert "budget store is unreachable" in caplog.text


# ----------------------------------------------------------------------------- Redis
_WORKER = textwrap.dedent(
    """
    import sys, threading
    from decimal import Decimal
    import openai, streamguard
    from streamguard import Budget, BudgetExceeded
    from streamguard._receipts.signing import HmacSigner
    from streamguard.testing.sinks import InMemoryReceiptSink

    base, limit = sys.argv[1], sys.argv[2]
    sink = InMemoryReceiptSink()
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"),
                           budgets=[Budget(limit_usd=limit, name="redis-shared")])
    c = openai.OpenAI(base_url=base, api_key="k", max_retries=0)
    def one():
        try:
            for _ in c.chat.completions.create(model="gpt-4o", max_tokens=50, stream=True,
                    messages=[{"role": "user", "content": "hello there"}]):
                pass
        except BudgetExceeded:
            pass
    threads = [threading.Thread(target=one) for _ in range(25)]
    [t.start() for t in threads]; [t.join() for t in threads]
    streamguard.uninstrument()
    print(sum(Decimal(r.cost.input or 0) + Decimal(r.cost.output or 0) for r in sink.receipts))
    """
)


def test_two_processes_share_one_budget_through_redis(upstream, redis_url, tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "STREAMGUARD_REDIS_URL": redis_url}
    limit = Decimal("0.02")  # one process alone wants ~0.013: both must spend, together overrun
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), upstream.openai_base_url, str(limit)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    totals = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        totals.append(Decimal(out.strip().splitlines()[-1]))
    assert sum(totals) <= limit + PRICE.output * 2
    assert all(t > 0 for t in totals)  # both processes spent from the one budget
    from streamguard._money.redis_store import RedisBudgetStore

    store = RedisBudgetStore(redis_url)
    spent, reserved = store.usage(Budget(limit_usd=limit, name="redis-shared").key({}))
    store.close()
    assert reserved == 0
    assert spent <= to_nano(limit) + to_nano(PRICE.output) * 2
