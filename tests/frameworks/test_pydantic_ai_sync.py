"""pydantic-ai's ``run_stream_sync``: a pump task drains the model stream for a sync caller.

``StreamedRunResultSync.stream_text()`` runs the agent on an event loop of the caller's thread
and hands items over through a zero-size memory stream from a pump task
(``pydantic_ai._sync_stream.SyncStreamBridge.stream_sync``). The loop runs only while the
caller waits for the next item, so a caller that breaks out and keeps the iterator leaves the
pump suspended with the HTTP stream open: the stall timer closes it though that loop is not
running (the watchdog thread notices a stream whose loop does not run: ``_engine/watchdog``).
Dropping the iterator or leaving the ``with`` block closes the pump, and with it the model
stream, at once.

Each scenario runs in a worker thread of its own, as a sync request handler does: pydantic-ai
refuses a sync stream on a thread whose event loop is running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from streamguard.testing import InMemoryReceiptSink, Upstream

from ._harness import (
    CUT,
    LONG,
    SHORT,
    completed_with_server_usage,
    now,
    one_receipt,
    stopped_at_once,
    stopped_by_stall,
    the_record,
)

T = TypeVar("T")
PROMPT = "say something long"


def _agent(up: Upstream) -> Any:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(
        "gpt-4o-mini", provider=OpenAIProvider(base_url=up.openai_base_url, api_key="test")
    )
    agent = Agent(model)
    if not hasattr(agent, "run_stream_sync"):
        pytest.skip("this pydantic-ai release has no run_stream_sync")
    return agent


def has_bridge() -> bool:
    """Whether this pydantic-ai runs sync streams on its bridge (a context manager whose exit and
    whose dropped iterators close the pump). Older releases drive the run with
    ``loop.run_until_complete(anext(...))`` per item and never close the async iterator."""
    from pydantic_ai.result import StreamedRunResultSync

    return hasattr(StreamedRunResultSync, "__enter__")


def in_worker(body: Callable[[], T]) -> T:
    """``body`` on a thread of its own (no event loop running there), as a sync server runs it."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(body).result(timeout=30)


def _take(pieces: Any, n: int) -> list[str]:
    taken: list[str] = []
    for piece in pieces:
        if piece.strip():
            taken.append(piece)
            if len(taken) == n:
                break
    return taken


def test_run_stream_sync_complete_run_gets_completed_with_server_usage(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    agent = _agent(up)

    def run() -> str:
        result = agent.run_stream_sync(PROMPT, model_settings={"max_tokens": SHORT})
        return "".join(result.stream_text(delta=True))

    assert in_worker(run).split() == [f"w{i}" for i in range(SHORT)]
    completed_with_server_usage(guarded, the_record(up), provider="openai")


def test_run_stream_sync_break_and_keep_is_stopped_by_the_stall_timer(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    agent = _agent(up)

    def run() -> tuple[Any, Any, int]:
        result = agent.run_stream_sync(PROMPT, model_settings={"max_tokens": LONG})
        pieces = result.stream_text(delta=True)
        assert len(_take(pieces, CUT)) == CUT
        return result, pieces, now()  # kept: nothing ever asks for the next piece

    kept = in_worker(run)  # the worker thread is free again; its loop stays stopped
    stopped_by_stall(the_record(up), kept[2])
    receipt = one_receipt(guarded, reason="consumer_stalled", category="client")
    assert "event loop was not running" in (receipt.detail or "")
    assert receipt.tokens.committed >= CUT


def test_run_stream_sync_break_and_drop_stops_the_upstream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink, request: pytest.FixtureRequest
) -> None:
    agent = _agent(up)
    if not has_bridge():
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason=(
                    "this pydantic-ai never closes the async iterator of a dropped sync one and "
                    "its loop stops, so no signal reaches StreamGuard at the drop: the model "
                    "stream is closed by the stall timer (the watchdog), not at once"
                ),
            )
        )

    def run() -> int:
        result = agent.run_stream_sync(PROMPT, model_settings={"max_tokens": LONG})
        pieces = result.stream_text(delta=True)
        assert len(_take(pieces, CUT)) == CUT
        t_stop = now()
        del pieces  # the sync generator closes: pydantic-ai cancels its pump
        return t_stop

    t_stop = in_worker(run)
    stopped_at_once(the_record(up), t_stop)
    receipt = one_receipt(guarded, category="client")
    assert receipt.reason in {"consumer_closed", "consumer_cancelled"}


def test_run_stream_sync_leaving_the_with_block_stops_the_upstream_at_once(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    agent = _agent(up)
    if not has_bridge():
        pytest.skip("this pydantic-ai's StreamedRunResultSync is no context manager")

    def run() -> int:
        with agent.run_stream_sync(PROMPT, model_settings={"max_tokens": LONG}) as result:
            pieces = result.stream_text(delta=True)
            assert len(_take(pieces, CUT)) == CUT
            t_stop = now()
        return t_stop

    t_stop = in_worker(run)
    stopped_at_once(the_record(up), t_stop)
    receipt = one_receipt(guarded, category="client")
    assert receipt.reason in {"consumer_closed", "consumer_cancelled"}


async def test_run_stream_sync_is_refused_on_a_running_loop_without_a_request(
    up: Upstream, guarded: InMemoryReceiptSink
) -> None:
    # pydantic-ai's own rule: no sync stream inside async code. Nothing is sent, no receipt.
    agent = _agent(up)
    with pytest.raises(RuntimeError):
        agent.run_stream_sync(PROMPT, model_settings={"max_tokens": SHORT})
    await asyncio.sleep(0.05)
    assert (up.requests, guarded.receipts) == ([], [])
