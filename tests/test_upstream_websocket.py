"""The test upstream's WebSocket APIs (OpenAI Realtime and Responses WebSocket mode), driven by
the openai SDK's own ``realtime.connect`` / ``responses.connect``: a response generates until
it is done or ``response.cancel``, whether or not the client reads, and stops when the socket
closes (docs/entry-points.md uses this to measure the WebSocket bleed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from streamguard.testing import RequestRecord, Upstream, expected_text

openai = pytest.importorskip("openai")
pytest.importorskip("websockets")

INTERVAL = 0.01
MS = 1_000_000
APIS = ["realtime", "responses"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=INTERVAL, default_max_tokens=400) as up:
        yield up


@pytest.fixture
def up(upstream: Upstream) -> Upstream:
    upstream.reset()
    return upstream


def connect(client: Any, api: str) -> Any:
    return client.realtime.connect(model="m") if api == "realtime" else client.responses.connect()


def create(conn: Any, api: str, n: int) -> Any:
    if api == "realtime":
        return conn.response.create(response={"max_output_tokens": n})
    return conn.response.create(model="m", input="one two", max_output_tokens=n)


def read_deltas(conn: Any, n: int) -> list[str]:
    texts = []
    for event in conn:
        if event.type == "response.output_text.delta":
            texts.append(event.delta)
            if len(texts) == n:
                break
    return texts


def the_record(up: Upstream) -> RequestRecord:
    (record,) = up.wait_for_requests(1)
    return record


@pytest.mark.parametrize("api", APIS)
def test_a_response_generates_to_its_end_while_the_client_reads_nothing(
    up: Upstream, api: str
) -> None:
    client = openai.OpenAI(base_url=up.openai_base_url, api_key="t", max_retries=0)
    with connect(client, api) as conn:
        create(conn, api, 20)
        record = the_record(up)
        assert record.wait_done(5.0)
        assert (record.outcome, record.tokens_generated, record.api) == (
            "completed",
            20,
            "realtime" if api == "realtime" else "responses.ws",
        )
        final = "response.done" if api == "realtime" else "response.completed"
        texts = []
        for event in conn:
            if event.type == "response.output_text.delta":
                texts.append(event.delta)
            if event.type == final:
                assert event.response.usage.output_tokens == 20
                break
    assert "".join(texts) == expected_text(20)


@pytest.mark.parametrize("api", APIS)
def test_closing_the_socket_stops_the_response_within_50ms(up: Upstream, api: str) -> None:
    client = openai.OpenAI(base_url=up.openai_base_url, api_key="t", max_retries=0)
    with connect(client, api) as conn:
        create(conn, api, 300)
        assert read_deltas(conn, 5) == [f" w{i}" for i in range(5)]
        t_stop = time.monotonic_ns()
    record = the_record(up)
    assert record.wait_done(2.0)
    assert record.outcome == "disconnected"
    assert record.disconnected_ns is not None
    assert record.disconnected_ns - t_stop <= 50 * MS
    assert record.tokens_after(t_stop) <= 1


def test_response_cancel_stops_the_response_and_the_session_goes_on(up: Upstream) -> None:
    client = openai.OpenAI(base_url=up.openai_base_url, api_key="t", max_retries=0)
    with connect(client, "realtime") as conn:
        create(conn, "realtime", 300)
        read_deltas(conn, 3)
        t_cancel = time.monotonic_ns()
        conn.response.cancel()
        for event in conn:
            if event.type == "response.done":
                assert event.response.status == "cancelled"
                break
        first = the_record(up)
        assert first.outcome == "cancelled"
        assert first.tokens_after(t_cancel) <= 1
        create(conn, "realtime", 4)  # the same socket serves the next response
        assert read_deltas(conn, 4) == [f" w{i}" for i in range(4)]
    second = up.wait_for_requests(2)[1]
    assert second.wait_done(2.0)
    assert second.tokens_generated == 4


def test_async_connection_closed_by_async_with_exit_stops_the_response() -> None:
    async def main(up: Upstream) -> tuple[int, RequestRecord]:
        client = openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="t", max_retries=0)
        async with client.realtime.connect(model="m") as conn:
            await conn.response.create(response={"max_output_tokens": 300})
            seen = 0
            async for event in conn:
                if event.type == "response.output_text.delta":
                    seen += 1
                    if seen == 5:
                        break
            t_stop = time.monotonic_ns()
        await client.close()
        return t_stop, the_record(up)

    with Upstream(token_interval=INTERVAL) as up:
        t_stop, record = asyncio.run(main(up))
        assert record.wait_done(2.0)
    assert record.outcome == "disconnected"
    assert record.tokens_after(t_stop) <= 1


def test_a_websocket_path_it_does_not_serve_is_refused(up: Upstream) -> None:
    websockets_client = pytest.importorskip("websockets.sync.client")
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus):
        websockets_client.connect(up.url.replace("http", "ws") + "/v1/nothing")
