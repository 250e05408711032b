"""The app the forked-worker tests serve with gunicorn ``--preload``: WSGI (sync workers) and
ASGI (uvicorn workers), instrumented at import in the master, as production apps are.

``GET /stream?mode=MODE&tag=TAG`` opens a guarded OpenAI stream (the upstream request carries
``x-test-tag: TAG``) and answers with text lines: first ``{"pid", "stream_id"}`` as JSON, then
what happened. Modes: ``close`` (read 5 chunks, close the stream), ``stall`` (read 5 chunks,
then stop pulling: the stall timer must cut it), ``cancel`` (read until the stream ends; the
test cancels it by id from another process). Each response lasts at least ``HOLD`` seconds so
that two concurrent requests land on two sync workers.

Configuration comes from the environment: ``OPENAI_BASE_URL`` and the ``STREAMGUARD_*``
variables. ``FORK_APP_WARMUP=1`` runs one stream in the master at import, so the master's
chain has a receipt before the workers fork.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import openai

import streamguard

HOLD = 0.6
STALL_WAIT = 1.5  # > STREAMGUARD_STALL_TIMEOUT set by the test

streamguard.instrument()
_base = os.environ["OPENAI_BASE_URL"]
client = openai.OpenAI(base_url=_base, api_key="k", max_retries=0)
aclient = openai.AsyncOpenAI(base_url=_base, api_key="k", max_retries=0)


def _create(tag: str) -> Any:
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "fork"}],
        max_tokens=300,
        stream=True,
        extra_headers={"x-test-tag": tag},
    )


if os.environ.get("FORK_APP_WARMUP") == "1":
    for _ in _create("warmup"):
        pass


def _stream_id(stream: Any) -> str:
    handle = streamguard.handle_of(stream)
    assert handle is not None, "the stream is not guarded"
    return handle.stream_id


def _line(**data: Any) -> bytes:
    return (json.dumps(data) + "\n").encode()


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    if environ["PATH_INFO"] == "/ping":
        yield _line(pid=os.getpid())
        return
    query = parse_qs(environ.get("QUERY_STRING", ""))
    mode, tag = query["mode"][0], query["tag"][0]
    started = time.monotonic()
    stream = _create(tag)
    yield _line(pid=os.getpid(), stream_id=_stream_id(stream))
    chunks = 0
    try:
        for _chunk in stream:
            chunks += 1
            if mode in {"close", "stall"} and chunks == 5:
                break
            if mode == "cancel":
                yield _line(chunk=chunks)
    except streamguard.StreamCancelled as exc:
        yield _line(ended="cancelled", reason=exc.reason)
    if mode == "close":
        stream.close()
    elif mode == "stall":
        time.sleep(STALL_WAIT)  # the stream object stays alive: only the stall timer can help
    yield _line(ended=mode, chunks=chunks)
    time.sleep(max(0.0, HOLD - (time.monotonic() - started)))
    del stream


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    started = time.monotonic()

    async def body(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["path"] == "/ping":
        await send({"type": "http.response.body", "body": _line(pid=os.getpid())})
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    mode, tag = query["mode"][0], query["tag"][0]
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "fork"}],
        max_tokens=300,
        stream=True,
        extra_headers={"x-test-tag": tag},
    )
    await body(_line(pid=os.getpid(), stream_id=_stream_id(stream)))
    chunks = 0
    try:
        async for _chunk in stream:
            chunks += 1
            if mode in {"close", "stall"} and chunks == 5:
                break
            if mode == "cancel":
                await body(_line(chunk=chunks))
    except streamguard.StreamCancelled as exc:
        await body(_line(ended="cancelled", reason=exc.reason))
    if mode == "close":
        await stream.close()
    elif mode == "stall":
        await asyncio.sleep(STALL_WAIT)
    await body(_line(ended=mode, chunks=chunks))
    await asyncio.sleep(max(0.0, HOLD - (time.monotonic() - started)))
    await send({"type": "http.response.body", "body": b""})
    del stream
