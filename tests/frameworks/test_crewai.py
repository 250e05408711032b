"""CrewAI: ``Crew(stream=True).kickoff()`` runs the crew on a thread (``kickoff_async()`` on a
task) whose model chunks reach an unbounded queue through CrewAI's event bus; when the
application stops consuming the streaming output, the crew's model stream stops and the crew
makes no further model call. A complete run is unchanged. Runs in its own venv
(``make frameworks-crewai``): crewai requires openai<3."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from streamguard.testing import InMemoryReceiptSink, Upstream

from ._harness import (
    CUT,
    LONG,
    SHORT,
    STALL,
    cancelled_while_reading,
    completed_with_server_usage,
    now,
    one_receipt,
    stopped_at_once,
    stopped_by_stall,
    the_record,
)

# CrewAI sends telemetry and traces to its own service unless told not to.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

crewai = pytest.importorskip("crewai")

RETRY_WINDOW = 1.0  # seconds after a stop in which a crew that retried would have called again


def _crew(up: Upstream, tokens: int) -> Any:
    """One agent, one task, streaming: CrewAI's native OpenAI client reaches the upstream."""
    llm = crewai.LLM(
        model="openai/gpt-4o-mini", base_url=up.openai_base_url, api_key="test", max_tokens=tokens
    )
    agent = crewai.Agent(role="writer", goal="write", backstory="writes", llm=llm, verbose=False)
    task = crewai.Task(description="say something long", expected_output="text", agent=agent)
    return crewai.Crew(agents=[agent], tasks=[task], stream=True, verbose=False)


def _take(output: Any, n: int) -> list[str]:
    texts: list[str] = []
    for chunk in output:
        texts.append(chunk.content)
        if len(texts) == n:
            break
    return texts


async def _take_async(output: Any, n: int) -> list[str]:
    texts: list[str] = []
    async for chunk in output:
        texts.append(chunk.content)
        if len(texts) == n:
            break
    return texts


def _words(texts: list[str]) -> list[str]:
    words = "".join(texts).split()
    assert words and words == [f"w{i}" for i in range(len(words))], words
    return words


def no_further_model_call(up: Upstream) -> None:
    """The crew, left by its application, sent no other request (CrewAI retries a failed
    model call: the retries are refused)."""
    time.sleep(RETRY_WINDOW)
    assert len(up.requests) == 1, [(r.outcome, r.tokens_generated) for r in up.requests]


# --- sync: kickoff() ---------------------------------------------------------------------------


def test_complete_kickoff_is_unchanged_and_completed_with_server_usage(
    up: Upstream, sink: Any, instrument_with: Any
) -> None:
    bare_output = _crew(up, SHORT).kickoff()
    bare = [(c.content, c.chunk_type) for c in bare_output]
    up.reset()
    instrument_with(stall_timeout=STALL)
    output = _crew(up, SHORT).kickoff()
    guarded = [(c.content, c.chunk_type) for c in output]
    assert guarded == bare
    assert _words([text for text, _ in guarded]) == [f"w{i}" for i in range(SHORT)]
    assert output.result.raw == bare_output.result.raw
    completed_with_server_usage(sink, the_record(up), provider="openai")


def test_kickoff_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    output = _crew(up, LONG).kickoff()
    _words(_take(output, CUT))
    t_stop = now()
    stopped_by_stall(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    no_further_model_call(up)
    assert output is not None


def test_kickoff_break_and_drop_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    _take(_crew(up, LONG).kickoff(), CUT)  # the streaming output is dropped here
    t_stop = now()
    stopped_at_once(the_record(up), t_stop)
    one_receipt(guarded, reason="consumer_closed", category="client")
    no_further_model_call(up)


def test_kickoff_close_stops_the_model_stream_at_once_and_returns(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    output = _crew(up, LONG).kickoff()
    _take(output, CUT)
    t_stop = now()
    output.close()  # without StreamGuard this joins the crew's thread: the whole answer
    returned = now()
    stopped_at_once(the_record(up), t_stop)
    assert returned - t_stop < 2e9, (returned - t_stop) / 1e9
    one_receipt(guarded, reason="consumer_closed", category="client")
    no_further_model_call(up)


# --- async: kickoff_async() --------------------------------------------------------------------


async def test_complete_kickoff_async_is_unchanged_and_completed_with_server_usage(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Any
) -> None:
    bare_output = await _crew(up, SHORT).kickoff_async()
    bare = [(c.content, c.chunk_type) async for c in bare_output]
    up.reset()
    instrument_with(stall_timeout=STALL)
    output = await _crew(up, SHORT).kickoff_async()
    guarded = [(c.content, c.chunk_type) async for c in output]
    assert guarded == bare
    assert _words([text for text, _ in guarded]) == [f"w{i}" for i in range(SHORT)]
    assert output.result.raw == bare_output.result.raw
    await sink.wait_for_async(1)
    await asyncio.to_thread(completed_with_server_usage, sink, the_record(up), provider="openai")


async def test_kickoff_async_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    output = await _crew(up, LONG).kickoff_async()
    _words(await _take_async(output, CUT))
    t_stop = now()
    await asyncio.to_thread(stopped_by_stall, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    await asyncio.to_thread(no_further_model_call, up)
    assert output is not None


async def test_kickoff_async_break_and_drop_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    await _take_async(await _crew(up, LONG).kickoff_async(), CUT)  # dropped here
    t_stop = now()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")
    await asyncio.to_thread(no_further_model_call, up)


async def test_kickoff_async_aclose_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    output = await _crew(up, LONG).kickoff_async()
    await _take_async(output, CUT)
    t_stop = now()
    await output.aclose()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")
    await asyncio.to_thread(no_further_model_call, up)


async def test_kickoff_async_cancelled_consumer_task_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        output = await _crew(up, LONG).kickoff_async()
        chunks = aiter(output)
        for _ in range(CUT):
            await anext(chunks)
        reading.set()
        async for _ in chunks:  # goes on reading (a chunk every 20 ms): cancelled in a read
            pass
        await asyncio.sleep(30)

    receipt = await cancelled_while_reading(up, guarded, consume, settle=0.05)
    assert receipt.reason == "consumer_cancelled", receipt.detail
    await asyncio.to_thread(no_further_model_call, up)


# --- wiring ------------------------------------------------------------------------------------


def test_uninstrument_removes_only_streamguards_layer_and_hook() -> None:
    import importlib

    import wrapt

    import streamguard
    from streamguard.integrations.crewai import CrewAIPatcher
    from streamguard.integrations.crewai._patch import _refuse_stopped_runs
    from streamguard.testing.instrumenting import instrument_for_test

    hooks = importlib.import_module("crewai.hooks")
    attrs = [
        (importlib.import_module(module), path) for module, path, _ in CrewAIPatcher().targets()
    ]
    originals = [vars(owner)[attr] for owner, attr in attrs]

    def foreign(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    instrument_for_test(InMemoryReceiptSink())
    try:
        assert _refuse_stopped_runs in hooks.get_before_llm_call_hooks()
        for (owner, attr), original in zip(attrs, originals, strict=True):
            ours = vars(owner)[attr]
            assert isinstance(ours, wrapt.FunctionWrapper) and ours.__wrapped__ is original
            wrapt.wrap_function_wrapper(owner, attr, foreign)  # another tool, after StreamGuard
    finally:
        streamguard.uninstrument()
    try:
        assert _refuse_stopped_runs not in hooks.get_before_llm_call_hooks()
        for (owner, attr), original in zip(attrs, originals, strict=True):
            theirs = vars(owner)[attr]
            assert isinstance(theirs, wrapt.FunctionWrapper), (owner, attr)
            assert theirs.__wrapped__ is original, (owner, attr)  # StreamGuard's layer is gone
    finally:
        for (owner, attr), original in zip(attrs, originals, strict=True):
            setattr(owner, attr, original)


def test_instrument_patches_crewai_only_when_the_app_imports_it() -> None:
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys, wrapt
        from streamguard.testing import InMemoryReceiptSink
        from streamguard.testing.instrumenting import instrument_for_test
        instrument_for_test(InMemoryReceiptSink())
        assert "crewai" not in sys.modules
        import crewai.crew
        assert isinstance(crewai.crew.create_chunk_generator, wrapt.FunctionWrapper)
        assert isinstance(crewai.crew.create_async_chunk_generator, wrapt.FunctionWrapper)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
