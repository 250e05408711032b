"""The streaming entry points that share a stream class with one in the conformance suite but
build their request (or wrap their stream) differently: each, sync and async, read to its end
(one completed receipt with the provider's usage), closed after 10 units, and left after 10
units (a plain stream dropped, a helper's ``with`` block exited). Each stop closes the upstream
within 50 ms with exactly one receipt whose counters are what the consumer did.

The full list of stop scenarios runs over one entry point of each wire format in
``test_conformance.py`` (``ADAPTERS``); the ones here add the request shapes (multipart image
edits, ``submit_tool_outputs``, a new thread, ``retrieve``, ``beta.*``, the session-thread and
bedrock twins) and the SDKs' own helpers (``AssistantEventHandler``).
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import pytest

import streamguard
from streamguard.providers import all_patchers
from streamguard.testing import InMemoryReceiptSink, RequestRecord, Upstream, expected_text

from ._adapters import ENTRY_POINTS
from ._harness import CUT, LONG, Case, check_invariants, check_upstream_stopped, summary

EXHAUST = 12
CASES = [f"{name}-{mode}" for name in ENTRY_POINTS for mode in ("sync", "async")]


@pytest.fixture(params=CASES)
def entry(request: pytest.FixtureRequest, up: Upstream, sink: InMemoryReceiptSink) -> Case:
    name, mode = request.param.rsplit("-", 1)
    adapter = ENTRY_POINTS[name]
    pytest.importorskip(adapter.module)
    if adapter.receipt_provider not in {patcher.name for patcher in all_patchers()}:
        pytest.skip(f"StreamGuard has no {adapter.receipt_provider} patcher")
    if (missing := adapter.missing()) is not None:
        pytest.skip(f"this {adapter.module} release has no {missing}")
    return Case(adapter, mode == "async", up, sink)


def _check_exhausted(c: Case, texts: list[str], record: RequestRecord) -> None:
    assert "".join(texts) == expected_text(EXHAUST)
    assert (record.outcome, record.output_tokens) == ("completed", EXHAUST)


def _expected_cut(c: Case, record: RequestRecord, *, consumed: int) -> dict[str, Any]:
    return c.expected(
        outcome="cancelled",
        reason="consumer_closed",
        category="client",
        max_tokens=LONG,
        produced=CUT,
        committed=CUT,
        consumed=consumed,
        input_tokens=record.input_tokens,
    )


async def test_read_to_the_end_gives_one_completed_receipt_with_provider_usage(
    entry: Case, instrumented: None
) -> None:
    def sync(c: Case) -> None:
        if c.adapter.helper:
            with c.open(EXHAUST) as handler:
                texts = [c.text(event) for event in handler]
        else:
            texts = [c.text(event) for event in c.open(EXHAUST)]
        check(c, [t for t in texts if t], c.finished(), c.receipt())

    async def async_(c: Case) -> None:
        if c.adapter.helper:
            async with c.open(EXHAUST) as handler:
                texts = [c.text(event) async for event in handler]
        else:
            texts = [c.text(event) async for event in await c.open(EXHAUST)]
        check(c, [t for t in texts if t], await c.afinished(), await c.areceipt())

    def check(c: Case, texts: list[str], record: RequestRecord, receipt: Any) -> None:
        _check_exhausted(c, texts, record)
        assert summary(receipt) == c.expected(
            outcome="completed",
            reason="completed",
            category=None,
            max_tokens=EXHAUST,
            produced=EXHAUST,
            committed=EXHAUST,
            consumed=EXHAUST,
            exact_usage=True,
            input_tokens=record.input_tokens,
        )
        check_invariants(receipt)

    try:
        await entry.run(sync, async_)
    finally:
        await entry.aclose()


async def test_close_after_ten_units_closes_upstream_within_50ms(
    entry: Case, instrumented: None
) -> None:
    # A helper's own close() (AssistantEventHandler.close) closes its stream through the guard.
    def sync(c: Case) -> None:
        if c.adapter.helper:
            with c.open() as handler:
                texts = c.take(handler)
                t_stop = time.monotonic_ns()
                handler.close()
                check(c, texts, t_stop, c.finished())
        else:
            stream = c.open()
            texts = c.take(stream)
            t_stop = time.monotonic_ns()
            stream.close()
            assert streamguard.handle_of(stream).receipt is not None  # type: ignore[union-attr]
            check(c, texts, t_stop, c.finished())

    async def async_(c: Case) -> None:
        if c.adapter.helper:
            async with c.open() as handler:
                texts = await c.atake(handler)
                t_stop = time.monotonic_ns()
                await handler.close()
                check(c, texts, t_stop, await c.afinished())
        else:
            stream = await c.open()
            texts = await c.atake(stream)
            t_stop = time.monotonic_ns()
            await stream.close()
            check(c, texts, t_stop, await c.afinished())

    def check(c: Case, texts: list[str], t_stop: int, record: RequestRecord) -> None:
        assert "".join(texts) == expected_text(CUT)
        check_upstream_stopped(record, t_stop)
        receipts = c.sink.receipts
        assert len(receipts) == 1, "close() returned before the receipt was sealed"
        assert summary(receipts[0]) == _expected_cut(c, record, consumed=CUT - 1)
        check_invariants(receipts[0])

    try:
        await entry.run(sync, async_)
    finally:
        await entry.aclose()


async def test_leaving_after_ten_units_closes_upstream_within_50ms(
    entry: Case, instrumented: None
) -> None:
    # A plain stream: break, then drop it (no gc.collect()). A helper: break out of the loop
    # and leave its with block.
    def sync(c: Case) -> tuple[list[str], int]:
        if c.adapter.helper:
            with c.open() as handler:
                texts = c.take(handler)
                t_stop = time.monotonic_ns()
            return texts, t_stop
        stream = c.open()
        texts = c.take(stream)
        t_stop = time.monotonic_ns()
        del stream
        return texts, t_stop

    async def async_(c: Case) -> tuple[list[str], int]:
        if c.adapter.helper:
            async with c.open() as handler:
                texts = await c.atake(handler)
                t_stop = time.monotonic_ns()
            return texts, t_stop
        stream = await c.open()
        texts = await c.atake(stream)
        t_stop = time.monotonic_ns()
        del stream
        return texts, t_stop

    try:
        texts, t_stop = await entry.run(sync, async_)
        record, receipt = await entry.settled()
    finally:
        await entry.aclose()
    assert "".join(texts) == expected_text(CUT)
    check_upstream_stopped(record, t_stop)
    assert summary(receipt) == _expected_cut(entry, record, consumed=CUT - 1)
    check_invariants(receipt)


#: The releases this list was written against (docs/entry-points.md); older ones (the oldest
#: ends in `make compat`) lack some, and their adapters are skipped by ``Adapter.requires``.
WRITTEN_FOR = {"openai": "3.63.0", "anthropic": "2.17.0"}


def test_every_entry_point_here_exists_in_the_installed_sdk() -> None:
    # A newer release that drops or renames one fails here by name, instead of its adapter
    # being skipped quietly.
    from packaging.version import Version

    paths = {
        "openai": [
            "resources.images.Images.edit",
            "resources.beta.threads.runs.runs.Runs.stream",
            "resources.beta.threads.runs.runs.Runs.create_and_stream",
            "resources.beta.threads.runs.runs.Runs.submit_tool_outputs",
            "resources.beta.threads.runs.runs.Runs.submit_tool_outputs_stream",
            "resources.beta.threads.threads.Threads.create_and_run",
            "resources.beta.threads.threads.Threads.create_and_run_stream",
            "resources.beta.responses.responses.Responses.create",
            "resources.beta.responses.responses.Responses.retrieve",
            "resources.responses.responses.Responses.retrieve",
        ],
        "anthropic": [
            "resources.beta.sessions.events.Events.stream",
            "resources.beta.sessions.threads.events.Events.stream",
            "resources.beta.bedrock.sessions.events.BedrockEvents.stream",
        ],
    }
    missing = []
    for sdk, names in paths.items():
        module = pytest.importorskip(sdk)
        if Version(module.__version__) < Version(WRITTEN_FOR[sdk]):
            continue
        for name in names:
            module_name, cls, attr = name.rsplit(".", 2)
            owner = importlib.import_module(f"{sdk}.{module_name}")
            if not hasattr(getattr(owner, cls, None), attr):
                missing.append(f"{sdk}.{name}")
    assert not missing, f"entry points missing from the installed SDKs: {missing}"
