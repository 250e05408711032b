"""The OpenAI Agents SDK: ``Runner.run_streamed`` drains the model stream in a background task;
when the application stops consuming ``stream_events()``, the model stream stops. Chat
Completions and Responses models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamguard.testing import InMemoryReceiptSink, Upstream

from ._harness import (
    CUT,
    LONG,
    SHORT,
    cancelled_while_reading,
    completed_with_server_usage,
    now,
    one_receipt,
    stopped_at_once,
    stopped_by_stall,
    the_record,
)

agents = pytest.importorskip("agents")
openai = pytest.importorskip("openai")

MODELS = ("chat", "responses")


@pytest.fixture(params=MODELS, ids=MODELS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(up: Upstream) -> Any:
    return openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="test", max_retries=0)


def _run(client: Any, kind: str, tokens: int) -> Any:
    model_class = (
        agents.OpenAIChatCompletionsModel if kind == "chat" else agents.OpenAIResponsesModel
    )
    agent = agents.Agent(
        name="writer",
        instructions="write",
        model=model_class(model="gpt-4o-mini", openai_client=client),
        model_settings=agents.ModelSettings(max_tokens=tokens),
    )
    return agents.Runner.run_streamed(agent, "say something long")


def _is_delta(event: Any) -> bool:
    return getattr(event, "type", None) == "raw_response_event"


async def _take(events: Any, n: int) -> None:
    taken = 0
    async for event in events:
        taken += _is_delta(event)
        if taken == n:
            return


async def test_complete_run_gets_completed_with_server_usage(
    up: Upstream, client: Any, kind: str, guarded: InMemoryReceiptSink
) -> None:
    result = _run(client, kind, SHORT)
    async for _event in result.stream_events():
        pass
    assert str(result.final_output).split() == [f"w{i}" for i in range(SHORT)]
    await guarded.wait_for_async(1)
    completed_with_server_usage(guarded, the_record(up), provider="openai")


async def test_break_out_of_stream_events_stops_the_model_stream_at_once(
    up: Upstream, client: Any, kind: str, guarded: InMemoryReceiptSink
) -> None:
    result = _run(client, kind, LONG)
    taken = 0
    async for event in result.stream_events():
        taken += _is_delta(event)
        if taken == CUT:
            break  # the loop drops the generator; the event loop closes it
    t_stop = now()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")
    assert result is not None  # the result is kept: only the events loop was left


async def test_closing_stream_events_stops_the_model_stream_at_once(
    up: Upstream, client: Any, kind: str, guarded: InMemoryReceiptSink
) -> None:
    result = _run(client, kind, LONG)
    events = result.stream_events()
    await _take(events, CUT)
    t_stop = now()
    await events.aclose()
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_events_kept_but_not_read_are_stopped_by_the_stall_timer(
    up: Upstream, client: Any, kind: str, guarded: InMemoryReceiptSink
) -> None:
    result = _run(client, kind, LONG)
    events = result.stream_events()
    await _take(events, CUT)
    t_stop = now()
    await asyncio.to_thread(stopped_by_stall, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert events is not None


async def test_dropped_result_is_stopped_by_the_stall_timer(
    up: Upstream, client: Any, kind: str, guarded: InMemoryReceiptSink
) -> None:
    _run(client, kind, LONG)  # stream_events() is never called; the result is dropped
    t_stop = now()
    await asyncio.to_thread(lambda: stopped_by_stall(the_record(up), t_stop))
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_stalled", category="client")


async def test_cancelled_consumer_task_stops_the_model_stream_at_once(
    up: Upstream, client: Any, kind: str, guarded: InMemoryReceiptSink
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        result = _run(client, kind, LONG)
        taken = 0
        async for event in result.stream_events():
            taken += _is_delta(event)
            if taken == CUT:
                reading.set()
                await asyncio.sleep(30)  # cancelled in the consumer's own code

    receipt = await cancelled_while_reading(up, guarded, consume)
    assert receipt.reason in {"consumer_closed", "consumer_cancelled"}
