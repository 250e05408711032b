"""A sync consumer blocked in a read on a silent upstream: the timer's stop must still close the
connection at once (the socket is shut down, not just closed from another thread)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import ollama
import openai
import pytest

import streamguard
from streamguard import StreamCancelled
from streamguard._receipts.signing import HmacSigner
from streamguard.testing import Fault, Upstream
from streamguard.testing.sinks import InMemoryReceiptSink

PROMPT = [{"role": "user", "content": "then stall"}]
IDLE = 0.3


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.01) as up:
        yield up


def _open(provider: str, up: Upstream) -> tuple[object, object]:
    if provider == "openai":
        c: object = openai.OpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
        return c, c.chat.completions.create(  # type: ignore[attr-defined]
            model="gpt-4o", messages=PROMPT, max_tokens=100, stream=True
        )
    if provider == "anthropic":
        c = anthropic.Anthropic(base_url=up.anthropic_base_url, api_key="k", max_retries=0)
        return c, c.messages.create(  # type: ignore[attr-defined]
            model="claude-sonnet-4-0", messages=PROMPT, max_tokens=100, stream=True
        )
    c = ollama.Client(host=up.ollama_host)
    return c._client, c.chat(  # type: ignore[attr-defined]
        model="llama3", messages=PROMPT, stream=True, options={"num_predict": 100}
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_idle_timeout_closes_a_connection_blocked_in_a_read(upstream, provider) -> None:
    sink = InMemoryReceiptSink()
    streamguard.instrument(
        sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"), idle_timeout=IDLE
    )
    try:
        before = len(upstream.requests)
        upstream.add_fault(Fault("stall", after_tokens=5, seconds=10))
        client, stream = _open(provider, upstream)
        t0 = time.monotonic_ns()
        with pytest.raises(StreamCancelled) as info:
            for _ in stream:  # type: ignore[attr-defined]
                pass
        assert info.value.reason == "upstream_idle"
        record = upstream.requests[before]
        assert record.wait_done(3)
        # The upstream went silent after 5 tokens; the stop lands IDLE seconds later.
        silent_since = record.token_times_ns[-1]
        assert record.disconnected_ns is not None, record.outcome
        assert (record.disconnected_ns - silent_since) / 1e9 <= IDLE + 0.05 + 0.05
        assert (time.monotonic_ns() - t0) / 1e9 < 2  # not the 10 s of the stall
        receipt = sink.wait_for(1, 2)[0]
        assert (receipt.reason, receipt.category) == ("upstream_idle", "upstream")
        client.close()  # type: ignore[attr-defined]
    finally:
        streamguard.uninstrument()


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_a_close_from_another_thread_ends_a_read_in_progress_quietly(upstream, provider) -> None:
    """The consumer closes the stream from another thread while its reader thread is blocked
    in a read (a framework's drain thread, a worker's watchdog): the upstream closes at once,
    and the reader's iteration just ends, as after any close by the consumer; the transport
    error the guard's own socket shutdown caused inside that read is not the reader's."""
    import threading

    sink = InMemoryReceiptSink()
    streamguard.instrument(sinks=[sink], signer=HmacSigner(bytes(32), key_id="t"))
    try:
        before = len(upstream.requests)
        upstream.add_fault(Fault("stall", after_tokens=5, seconds=10))
        client, stream = _open(provider, upstream)
        got: list[object] = []
        outcome: list[BaseException | None] = []

        def read() -> None:
            try:
                for chunk in stream:  # type: ignore[attr-defined]
                    got.append(chunk)
                outcome.append(None)
            except BaseException as exc:  # what the reader saw, for the assertion
                outcome.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        record = upstream.requests[before] if len(upstream.requests) > before else None
        deadline = time.monotonic() + 5
        while (record is None or len(record.token_times_ns) < 5) and time.monotonic() < deadline:
            time.sleep(0.01)
            if record is None and len(upstream.requests) > before:
                record = upstream.requests[before]
        assert record is not None and len(record.token_times_ns) == 5
        time.sleep(0.1)  # the reader is blocked in its read of the silent upstream
        t_close = time.monotonic_ns()
        stream.close()  # type: ignore[attr-defined]
        reader.join(3)
        assert not reader.is_alive(), "the read in progress was not ended by close()"
        assert outcome == [None], f"the reader got {outcome[0]!r}"
        assert got, "the reader saw none of the chunks sent before the stall"
        assert record.wait_done(3)
        assert record.disconnected_ns is not None, record.outcome
        assert (record.disconnected_ns - t_close) / 1e9 <= 0.05 + 0.05
        receipt = sink.wait_for(1, 2)[0]
        assert (receipt.reason, receipt.category) == ("consumer_closed", "client")
        client.close()  # type: ignore[attr-defined]
    finally:
        streamguard.uninstrument()
