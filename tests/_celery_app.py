"""The Celery app of the prefork-pool test: ``instrument()`` at import, in the worker's main
process, which then forks its pool processes (docs/forking.md, Celery).

Task ``stream(mode, tag)`` opens a guarded OpenAI stream (upstream request tagged
``x-test-tag: TAG``) and ends it as ``mode`` says: ``close`` (read 5 chunks, close),
``stall`` (read 5 chunks, then hold the stream: the stall timer must cut it), ``cancel`` (read
on; the test cancels the stream by id through Redis; the id is published under
``celery-stream:TAG``). Returns what happened, with the pool process's pid.

Configuration from the environment: ``CELERY_REDIS_URL`` (broker and result backend),
``OPENAI_BASE_URL`` and the ``STREAMGUARD_*`` variables.
"""

from __future__ import annotations

import os
import time
from typing import Any

import openai
import redis
from celery import Celery
from celery.signals import worker_process_shutdown

import streamguard

HOLD = 0.6
STALL_WAIT = 1.5  # > STREAMGUARD_STALL_TIMEOUT set by the test

_url = os.environ["CELERY_REDIS_URL"]
app = Celery("_celery_app", broker=_url, backend=_url)
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True, broker_connection_retry=True)
streamguard.instrument()
client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="k", max_retries=0)


@worker_process_shutdown.connect
def _flush_receipts(**_: Any) -> None:
    streamguard.uninstrument()


@app.task(name="_celery_app.stream")
def stream(mode: str, tag: str) -> dict[str, Any]:
    started = time.monotonic()
    s = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "celery"}],
        max_tokens=300,
        stream=True,
        extra_headers={"x-test-tag": tag},
    )
    handle = streamguard.handle_of(s)
    assert handle is not None, "the stream is not guarded"
    out: dict[str, Any] = {"pid": os.getpid(), "stream_id": handle.stream_id, "mode": mode}
    if mode == "cancel":
        redis.Redis.from_url(_url).set(f"celery-stream:{tag}", handle.stream_id, ex=60)
    chunks = 0
    try:
        for _chunk in s:
            chunks += 1
            if mode in {"close", "stall"} and chunks == 5:
                break
    except streamguard.StreamCancelled as exc:
        out["ended"] = {"ended": "cancelled", "reason": exc.reason}
    if mode == "close":
        s.close()
    elif mode == "stall":
        time.sleep(STALL_WAIT)  # the stream object stays alive: only the stall timer can help
    out["chunks"] = chunks
    time.sleep(max(0.0, HOLD - (time.monotonic() - started)))
    return out
