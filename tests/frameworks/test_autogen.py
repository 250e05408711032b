"""AutoGen AgentChat teams: ``run_stream`` runs the agents on a background runtime whose
model chunks go to an unbounded queue; when the application stops reading, the model stream
stops and the team is cancelled. A complete run is unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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

pytest.importorskip("autogen_agentchat")
pytest.importorskip("autogen_ext.models.openai")

PROMPT = "say something long"


def _team_stream(up: Upstream, tokens: int) -> AsyncIterator[Any]:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.conditions import MaxMessageTermination
    from autogen_agentchat.teams import RoundRobinGroupChat
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    client = OpenAIChatCompletionClient(
        model="gpt-4o-mini",
        base_url=up.openai_base_url,
        api_key="test",
        max_tokens=tokens,
        max_retries=0,
    )
    agent = AssistantAgent("writer", model_client=client, model_client_stream=True)
    team = RoundRobinGroupChat([agent], termination_condition=MaxMessageTermination(2))
    return team.run_stream(task=PROMPT)  # type: ignore[no-any-return]


def _chunk(message: Any) -> str | None:
    from autogen_agentchat.messages import ModelClientStreamingChunkEvent

    return str(message.content) if isinstance(message, ModelClientStreamingChunkEvent) else None


async def _take(events: AsyncIterator[Any], n: int) -> list[str]:
    texts: list[str] = []
    async for message in events:
        text = _chunk(message)
        if text is not None:
            texts.append(text)
            if len(texts) == n:
                break
    return texts


async def _all(events: AsyncIterator[Any]) -> list[str]:
    return [t async for m in events if (t := _chunk(m)) is not None]


async def test_complete_run_is_unchanged_and_completed_with_server_usage(
    up: Upstream, sink: InMemoryReceiptSink, instrument_with: Callable[..., None]
) -> None:
    bare = await _all(_team_stream(up, SHORT))
    up.reset()
    instrument_with(stall_timeout=STALL)
    guarded = await _all(_team_stream(up, SHORT))
    assert guarded == bare
    assert "".join(guarded).split() == [f"w{i}" for i in range(SHORT)]
    await sink.wait_for_async(1)
    completed_with_server_usage(sink, the_record(up), provider="openai")


async def test_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    events = _team_stream(up, LONG)
    words = "".join(await _take(events, CUT)).split()
    t_stop = now()
    assert words and words == [f"w{i}" for i in range(len(words))], words
    await asyncio.to_thread(stopped_by_stall, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_stalled", category="client")
    assert events is not None


async def test_break_and_drop_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    await _take(_team_stream(up, LONG), CUT)  # the loop drops the generator
    t_stop = now()  # the generator was closed when it was dropped: no GC needed
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_aclose_stops_the_model_stream_at_once_and_returns(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    events: Any = _team_stream(up, LONG)
    await _take(events, CUT)
    t_stop = now()
    await events.aclose()  # without StreamGuard this waits for the whole answer
    await asyncio.to_thread(stopped_at_once, the_record(up), t_stop)
    await guarded.wait_for_async(1)
    one_receipt(guarded, reason="consumer_closed", category="client")


async def test_cancelled_consumer_task_stops_the_model_stream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    async def consume(reading: asyncio.Event) -> None:
        events = _team_stream(up, LONG)
        await _take(events, CUT)
        reading.set()
        await events.__anext__()  # waits for the next message: cancelled here
        await asyncio.sleep(30)

    receipt = await cancelled_while_reading(up, guarded, consume, settle=0.05)
    assert receipt.reason in {"consumer_cancelled", "consumer_closed"}
