"""Streaming policies: each strategy with a keyword checker; blocked text never reaches the app."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import openai
import pytest

import streamguard
from streamguard import StreamBlocked, StreamCancelled, StreamPolicy, Verdict
from streamguard._receipts.signing import HmacSigner
from streamguard.testing import Upstream
from streamguard.testing.sinks import InMemoryReceiptSink

PROMPT = [{"role": "user", "content": "count"}]
BAD = " w30"  # the upstream's token 30


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.002) as up:
        yield up


@pytest.fixture(autouse=True)
def _uninstrument() -> Iterator[None]:
    yield
    streamguard.uninstrument()


class Keyword:
    """A checker that blocks a keyword and records every text it was shown."""

    def __init__(self, word: str = BAD) -> None:
        self.word = word
        self.seen: list[str] = []

    def __call__(self, text: str) -> Verdict:
        self.seen.append(text)
        if self.word + " " in text + " ":
            return Verdict.block("keyword", f"found {self.word.strip()!r}")
        return Verdict.allow()


def run(
    up: Upstream, policy: StreamPolicy, sink: InMemoryReceiptSink
) -> tuple[str, BaseException | None]:
    streamguard.instrument(
        sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"), policies=[policy]
    )
    c = openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
    text, error = "", None
    try:
        for chunk in c.chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=60, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    except StreamCancelled as exc:
        error = exc
    c.close()
    return text, error


@pytest.mark.parametrize(
    ("strategy", "kw"),
    [
        ("continuous", {}),
        ("periodic", {"every_chars": 20}),
        ("periodic", {"every_chars": None, "every_tokens": 4}),
        ("sentence_boundary", {"max_buffer_chars": 25}),
    ],
)
def test_blocked_output_never_reaches_the_application(upstream, strategy, kw) -> None:
    sink = InMemoryReceiptSink()
    checker = Keyword()
    text, error = run(upstream, StreamPolicy(checker, strategy=strategy, **kw), sink)
    assert isinstance(error, StreamBlocked)
    assert error.category == "keyword"
    assert f"{BAD} " not in f"{text} "
    r = sink.wait_for(1, 2)[0]
    assert (r.outcome, r.reason, r.category) == ("cancelled", "content_policy", "policy")
    assert r.detail.startswith("keyword")  # type: ignore[union-attr]
    assert r.tokens.committed < r.tokens.produced


def test_periodic_evaluation_respects_its_interval(upstream) -> None:
    sink = InMemoryReceiptSink()
    checker = Keyword(word=" never")
    text, error = run(upstream, StreamPolicy(checker, strategy="periodic", every_chars=40), sink)
    assert error is None
    sizes = [len(t) for t in checker.seen]
    # Each check sees at least 40 more characters than the one before it, except the last
    # (the end of the stream checks what was left).
    assert all(b - a >= 40 for a, b in itertools.pairwise(sizes[:-1]))
    assert len(checker.seen) <= len(text) // 40 + 2


def test_end_only_flags_but_cannot_prevent(upstream) -> None:
    sink = InMemoryReceiptSink()
    checker = Keyword()
    text, error = run(upstream, StreamPolicy(checker, strategy="end_only"), sink)
    assert error is None
    assert f"{BAD} " in f"{text} "
    assert len(checker.seen) == 1
    r = sink.wait_for(1, 2)[0]
    assert r.reason == "completed"
    assert r.attributes["policy.policy"] == "keyword"


def test_without_early_termination_records_and_continues(upstream) -> None:
    sink = InMemoryReceiptSink()
    policy = StreamPolicy(Keyword(), strategy="continuous", early_termination=False, name="audit")
    text, error = run(upstream, policy, sink)
    assert error is None
    assert len(text.split()) == 60
    assert sink.wait_for(1, 2)[0].attributes["policy.audit"] == "keyword"


async def test_async_check_on_async_stream(upstream) -> None:
    sink = InMemoryReceiptSink()
    calls = 0

    async def check(text: str) -> bool:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return f"{BAD} " not in f"{text} "

    streamguard.instrument(
        sinks=[sink],
        signer=HmacSigner(bytes(32), key_id="t"),
        policies=[StreamPolicy(check, strategy="continuous")],
    )
    c = openai.AsyncOpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
    got = ""
    with pytest.raises(StreamBlocked):
        async for chunk in await c.chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=60, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                got += chunk.choices[0].delta.content
    await c.close()
    assert f"{BAD} " not in f"{got} "
    assert calls >= 30


def test_max_output_tokens_caps_the_stream(upstream) -> None:
    sink = InMemoryReceiptSink()
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"))
    c = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
    got = 0
    with streamguard.limits(max_output_tokens=10), pytest.raises(StreamCancelled) as info:
        for chunk in c.chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=100, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                got += 1
    c.close()
    assert info.value.reason == "max_output_tokens"
    assert got == 10
    r = sink.wait_for(1, 2)[0]
    assert (r.reason, r.category, r.tokens.committed) == ("max_output_tokens", "policy", 10)


def test_per_request_deadline(upstream) -> None:
    sink = InMemoryReceiptSink()
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"))
    c = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
    t0 = time.monotonic()
    with streamguard.limits(deadline=0.1), pytest.raises(StreamCancelled) as info:
        for _ in c.chat.completions.create(
            model="gpt-4o", messages=PROMPT, max_tokens=1000, stream=True
        ):
            pass
    c.close()
    assert info.value.reason == "deadline_exceeded"
    assert time.monotonic() - t0 < 1.0
