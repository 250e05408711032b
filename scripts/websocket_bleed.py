"""Measure the bleed of the openai SDK's WebSocket APIs (``realtime.connect``,
``responses.connect``) on the test upstream: the tokens a response generated in the 3 s after
the consumer stopped, for each way a consumer stops. Prints a Markdown table
(docs/entry-points.md has today's numbers).

    .venv/bin/python scripts/websocket_bleed.py

The upstream's WebSocket endpoints behave as the documented server: a response generates until
it is done or ``response.cancel``, and stops when the socket closes (``_wire_realtime``). One
token per 20 ms; each response would run 200 tokens (4 s); the consumer stops after 10 deltas.
StreamGuard is instrumented for the whole run, to show what it does (and does not) change.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai

import streamguard
from streamguard.testing import InMemoryReceiptSink, Upstream

WINDOW = 3.0
CUT = 10
N = 200
DELTAS = ("response.output_text.delta",)


def _create(api: str, conn: Any) -> None:
    if api == "realtime":
        conn.response.create(response={"max_output_tokens": N})
    else:
        conn.response.create(model="m", input="count slowly", max_output_tokens=N)


def _connect(api: str, client: Any) -> Any:
    return client.realtime.connect(model="m") if api == "realtime" else client.responses.connect()


def take(conn: Any) -> None:
    seen = 0
    for event in conn:
        if event.type in DELTAS:
            seen += 1
            if seen == CUT:
                return


async def atake(conn: Any) -> None:
    seen = 0
    async for event in conn:
        if event.type in DELTAS:
            seen += 1
            if seen == CUT:
                return


def sync_with_exit(api: str, client: Any) -> int:
    with _connect(api, client) as conn:
        _create(api, conn)
        take(conn)
        t_stop = time.monotonic_ns()
    return t_stop


def sync_break_kept(api: str, client: Any) -> int:
    conn = _connect(api, client).enter()
    _create(api, conn)
    take(conn)
    t_stop = time.monotonic_ns()
    time.sleep(WINDOW)
    conn.close()
    return t_stop


def sync_del(api: str, client: Any) -> int:
    conn = _connect(api, client).enter()
    _create(api, conn)
    take(conn)
    t_stop = time.monotonic_ns()
    del conn
    gc.collect()
    return t_stop


def sync_cancel_then_keep(api: str, client: Any) -> int | None:
    if api != "realtime":
        return None  # responses.connect has no response.cancel: only closing stops it
    conn = _connect(api, client).enter()
    _create(api, conn)
    take(conn)
    t_stop = time.monotonic_ns()
    conn.response.cancel()
    time.sleep(WINDOW)
    conn.close()
    return t_stop


async def async_with_exit(api: str, client: Any) -> int:
    async with _connect(api, client) as conn:
        _create_a = conn.response.create
        await (
            _create_a(response={"max_output_tokens": N})
            if api == "realtime"
            else _create_a(model="m", input="count slowly", max_output_tokens=N)
        )
        await atake(conn)
        t_stop = time.monotonic_ns()
    return t_stop


async def _aopen(api: str, client: Any) -> Any:
    conn = await _connect(api, client).enter()
    create = conn.response.create
    if api == "realtime":
        await create(response={"max_output_tokens": N})
    else:
        await create(model="m", input="count slowly", max_output_tokens=N)
    return conn


async def async_del(api: str, client: Any) -> int:
    conn = await _aopen(api, client)
    await atake(conn)
    t_stop = time.monotonic_ns()
    del conn
    gc.collect()
    await asyncio.sleep(WINDOW)
    return t_stop


async def async_task_cancelled(api: str, client: Any) -> int:
    # The connection entered outside the task (an app-level session); the task reading it is
    # cancelled while it works on the tenth delta.
    conn = await _aopen(api, client)
    tenth = asyncio.Event()

    async def consumer() -> None:
        await atake(conn)
        tenth.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(consumer())
    await tenth.wait()
    t_stop = time.monotonic_ns()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(WINDOW)
    await conn.close()
    return t_stop


SYNC_ROWS: dict[str, Callable[[str, Any], int | None]] = {
    "sync `with` exit (socket closed)": sync_with_exit,
    "sync break, connection kept": sync_break_kept,
    "sync `del` (+ gc.collect())": sync_del,
    "sync `response.cancel`, connection kept": sync_cancel_then_keep,
}
ASYNC_ROWS: dict[str, Callable[[str, Any], Awaitable[int]]] = {
    "async `with` exit (socket closed)": async_with_exit,
    "async `del` (+ gc.collect())": async_del,
    "task cancelled inside consumer code": async_task_cancelled,
}


def measure(up: Upstream, t_stop: int | None) -> int | str:
    if t_stop is None:
        return "n/a"
    record = up.requests[-1]
    record.wait_done(max(0.0, (t_stop + int(WINDOW * 1e9) - time.monotonic_ns()) / 1e9))
    return record.tokens_after(t_stop) - record.tokens_after(t_stop + int(WINDOW * 1e9))


def main() -> None:
    streamguard.instrument(sinks=[InMemoryReceiptSink()])
    results: dict[str, dict[str, int | str]] = {}
    with Upstream(token_interval=0.02, default_max_tokens=N) as up:
        sync_client = openai.OpenAI(base_url=up.openai_base_url, api_key="t", max_retries=0)
        async_client = openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="t", max_retries=0)
        for api in ("realtime", "responses"):
            for name, row in SYNC_ROWS.items():
                results.setdefault(name, {})[api] = measure(up, row(api, sync_client))
            for name, arow in ASYNC_ROWS.items():
                t_stop = asyncio.run(arow(api, async_client))
                results.setdefault(name, {})[api] = measure(up, t_stop)
        sync_client.close()
    streamguard.uninstrument()
    print("| how the consumer stops | realtime.connect | responses.connect |")
    print("|---|---|---|")
    for name, by_api in results.items():
        print(f"| {name} | {by_api['realtime']} | {by_api['responses']} |")


if __name__ == "__main__":
    main()
