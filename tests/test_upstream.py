"""The test upstream over raw HTTP: its clock, its disconnect detection, its records and faults.

The SDK-level checks (each provider's SDK parses what it sends) are in test_upstream_sdks.py.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from streamguard.testing import Fault, RequestRecord, Upstream, expected_text

INTERVAL = 0.005
MS = 1_000_000

# One streaming request per endpoint the upstream serves: (path below up.url, body).
MSGS = [{"role": "user", "content": "one two three"}]
ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai-chat": ("/v1/chat/completions", {"model": "m", "messages": MSGS, "stream": True}),
    "openai-completions": ("/v1/completions", {"model": "m", "prompt": "a b", "stream": True}),
    "openai-responses": ("/v1/responses", {"model": "m", "input": "a b", "stream": True}),
    "anthropic": (
        "/v1/messages",
        {"model": "m", "messages": MSGS, "max_tokens": 400, "stream": True},
    ),
    "ollama-chat": ("/api/chat", {"model": "m", "messages": MSGS}),
    "ollama-generate": ("/api/generate", {"model": "m", "prompt": "a b"}),
    "gemini": (
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "a b"}]}]},
    ),
    "mistral": ("/mistral/v1/chat/completions", {"model": "m", "messages": MSGS, "stream": True}),
}


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=INTERVAL, default_max_tokens=400) as up:
        yield up


@pytest.fixture
def up(shared_upstream: Upstream) -> Upstream:
    shared_upstream.reset()
    return shared_upstream


def only_record(up: Upstream) -> RequestRecord:
    (record,) = up.wait_for_requests(1)
    assert record.wait_done(5.0), record
    return record


def sse_data(lines: list[str]) -> list[Any]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def post_lines(
    up: Upstream, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[str]:
    response = httpx.post(up.url + path, json=body, headers=headers, timeout=10)
    response.raise_for_status()
    return response.text.splitlines()


# -- lifecycle --------------------------------------------------------------------------------


def test_start_serves_on_an_ephemeral_port_and_stop_leaves_no_thread() -> None:
    def upstream_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("streamguard-upstream")}

    others = upstream_threads()  # the session's shared upstream (pytest_plugin) may be running
    upstream = Upstream(token_interval=INTERVAL)
    with upstream as up:
        assert up.url == f"http://127.0.0.1:{up.port}"
        assert up.openai_base_url == up.url + "/v1"
        assert up.mistral_base_url == up.url + "/mistral"
        assert upstream_threads() - others
    assert not upstream_threads() - others
    upstream.stop()  # a second stop is a no-op
    with pytest.raises(httpx.ConnectError):
        httpx.get(upstream.url + "/", timeout=1)


def test_stop_mid_stream_resets_the_client_and_records_shutdown() -> None:
    upstream = Upstream(token_interval=INTERVAL).start()
    body = ENDPOINTS["openai-chat"][1]
    with (
        httpx.Client() as client,
        client.stream("POST", upstream.url + "/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        next(lines)
        started = time.monotonic()
        upstream.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises(httpx.TransportError):
            for _ in lines:
                pass
    record = only_record(upstream)
    assert (record.outcome, record.completed) == ("shutdown", False)


# -- its own clock and the disconnect ---------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_client_close_mid_stream_is_seen_within_50ms_and_generation_stops(
    up: Upstream, endpoint: str
) -> None:
    path, body = ENDPOINTS[endpoint]
    with httpx.Client() as client:
        with client.stream("POST", up.url + path, json=body) as response:
            received = 0
            for line in response.iter_lines():
                received += '" w' in line  # a token frame
                if received == 5:
                    break
            closed_ns = time.monotonic_ns()
            response.close()
        record = only_record(up)
    assert record.outcome == "disconnected"
    assert record.disconnected_ns is not None
    assert record.disconnected_ns - closed_ns < 50 * MS
    assert record.tokens_after(closed_ns) <= 1
    time.sleep(10 * INTERVAL)
    assert record.tokens_generated == len(record.token_times_ns) < record.planned_tokens


async def test_async_client_close_is_seen_within_50ms(up: Upstream) -> None:
    path, body = ENDPOINTS["anthropic"]
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", up.url + path, json=body) as response,
    ):
        async for line in response.aiter_lines():
            if "text_delta" in line:
                break
        closed_ns = time.monotonic_ns()
        await response.aclose()
    record = only_record(up)
    assert record.disconnected_ns is not None
    assert record.disconnected_ns - closed_ns < 50 * MS
    assert record.tokens_after(closed_ns) <= 1


def test_generates_on_its_own_clock_while_the_client_does_not_read(up: Upstream) -> None:
    path, body = ENDPOINTS["openai-chat"]
    with httpx.Client() as client, client.stream("POST", up.url + path, json=body):
        (record,) = up.wait_for_requests(1)
        before = record.tokens_generated
        time.sleep(40 * INTERVAL)
        grown = record.tokens_generated - before
        closed_ns = time.monotonic_ns()
    # Nothing was read, yet the answer went on being generated, until the connection closed.
    assert grown >= 10
    assert record.wait_done(5.0)
    assert record.outcome == "disconnected"
    assert record.tokens_after(closed_ns) <= 1


def test_non_streaming_request_generates_then_stops_when_the_client_times_out(
    up: Upstream,
) -> None:
    body = {"model": "m", "messages": MSGS, "max_tokens": 400}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(up.openai_base_url + "/chat/completions", json=body, timeout=0.1)
    gave_up_ns = time.monotonic_ns()
    record = only_record(up)
    assert (record.stream, record.outcome, record.status) == (False, "disconnected", None)
    assert record.tokens_generated >= 5
    assert record.tokens_after(gave_up_ns) <= 1


def test_tokens_follow_the_interval_and_times_are_monotonic_and_wall(up: Upstream) -> None:
    started_ns = time.monotonic_ns()
    post_lines(up, "/v1/chat/completions", {**ENDPOINTS["openai-chat"][1], "max_tokens": 20})
    record = only_record(up)
    times = record.token_times_ns
    assert started_ns <= record.started_ns < times[0]
    assert record.finished_ns is not None
    assert times[-1] <= record.finished_ns
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert 0.5 * INTERVAL * 1e9 < gaps[len(gaps) // 2] < 2 * INTERVAL * 1e9
    assert abs(record.wall_ns(times[0]) - time.time_ns()) < 5 * 10**9
    assert record.tokens_after(times[9]) == 10


def test_token_interval_and_length_can_be_set_per_request(up: Upstream) -> None:
    headers = {"x-upstream-token-interval": "0.02", "x-upstream-tokens": "3"}
    lines = post_lines(up, "/v1/chat/completions", ENDPOINTS["openai-chat"][1], headers)
    record = only_record(up)
    assert (record.token_interval, record.tokens_generated) == (0.02, 3)
    assert record.token_times_ns[2] - record.token_times_ns[0] >= 20 * MS  # 10 ms by default
    chunks = sse_data(lines)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# -- turn length and what the records say -----------------------------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "header", "n", "finish"),
    [
        (None, None, 400, "stop"),  # no limit: default_max_tokens, a natural end
        (6, None, 6, "length"),  # the limit is reached
        (6, "4", 4, "stop"),  # the answer is shorter than the limit
        (6, "9", 6, "length"),
    ],
)
def test_turn_length_and_finish_reason(
    up: Upstream, max_tokens: int | None, header: str | None, n: int, finish: str
) -> None:
    body: dict[str, Any] = {"model": "m", "messages": MSGS, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    headers = {"x-upstream-token-interval": "0"}
    if header is not None:
        headers["x-upstream-tokens"] = header
    chunks = sse_data(post_lines(up, "/v1/chat/completions", body, headers))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == expected_text(n)
    assert chunks[-1]["choices"][0]["finish_reason"] == finish
    record = only_record(up)
    assert (record.max_tokens, record.tokens_generated, record.completed) == (max_tokens, n, True)


def test_record_of_a_completed_stream(up: Upstream) -> None:
    body = {
        "model": "gpt-x",
        "messages": [{"role": "system", "content": "be brief"}, *MSGS],
        "max_completion_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    post_lines(up, "/v1/chat/completions", body)
    record = only_record(up)
    assert {
        "provider": record.provider,
        "api": record.api,
        "path": record.path,
        "model": record.model,
        "stream": record.stream,
        "max_tokens": record.max_tokens,
        "input_tokens": record.input_tokens,
        "tokens_generated": record.tokens_generated,
        "output_tokens": record.output_tokens,
        "status": record.status,
        "outcome": record.outcome,
        "disconnected_ns": record.disconnected_ns,
        "fault": record.fault,
    } == {
        "provider": "openai",
        "api": "chat",
        "path": "/v1/chat/completions",
        "model": "gpt-x",
        "stream": True,
        "max_tokens": 3,
        "input_tokens": 5,
        "tokens_generated": 3,
        "output_tokens": 3,
        "status": 200,
        "outcome": "completed",
        "disconnected_ns": None,
        "fault": None,
    }
    assert record.body["stream_options"] == {"include_usage": True}


# -- wire details the SDKs and the guard rely on ----------------------------------------------


def test_openai_chat_usage_chunk_only_with_include_usage(up: Upstream) -> None:
    body = {"model": "m", "messages": MSGS, "max_tokens": 2, "stream": True}
    plain = post_lines(up, "/v1/chat/completions", body)
    with_usage = post_lines(
        up, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
    )
    assert plain[-2:] == with_usage[-2:] == ["data: [DONE]", ""]
    assert all("usage" not in chunk for chunk in sse_data(plain))
    *chunks, last = sse_data(with_usage)
    assert all(chunk["usage"] is None for chunk in chunks)
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    first, second = up.wait_for_requests(2)
    assert (first.output_tokens, second.output_tokens) == (None, 2)


def test_anthropic_event_sequence(up: Upstream) -> None:
    lines = post_lines(up, *ENDPOINTS["anthropic"], {"x-upstream-tokens": "2"})
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, *_, delta, _stop = sse_data(lines)
    assert start["message"]["usage"]["input_tokens"] == 3
    assert (delta["delta"]["stop_reason"], delta["usage"]["output_tokens"]) == ("end_turn", 2)


def test_responses_events_are_numbered_in_order(up: Upstream) -> None:
    lines = post_lines(up, *ENDPOINTS["openai-responses"], {"x-upstream-tokens": "2"})
    events = sse_data(lines)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["output_tokens"] == 2


def test_responses_can_end_incomplete_on_the_output_limit() -> None:
    with Upstream(token_interval=0, responses_incomplete_on_length=True) as up:
        body = {"model": "m", "input": "x", "max_output_tokens": 2, "stream": True}
        last = sse_data(post_lines(up, "/v1/responses", body))[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_gemini_usage_is_a_running_total(up: Upstream) -> None:
    lines = post_lines(up, *ENDPOINTS["gemini"], {"x-upstream-tokens": "3"})
    frames = sse_data(lines)
    assert [f["usageMetadata"]["candidatesTokenCount"] for f in frames] == [1, 2, 3, 3]
    assert frames[-1]["candidates"][0]["finishReason"] == "STOP"
    assert only_record(up).model == "gemini-2.0-flash"


def test_ollama_streams_ndjson_by_default_and_honours_num_predict(up: Upstream) -> None:
    body = {"model": "m", "prompt": "a b c", "options": {"num_predict": 2}}
    response = httpx.post(up.ollama_host + "/api/generate", json=body)
    assert response.headers["content-type"] == "application/x-ndjson"
    *parts, done = [json.loads(line) for line in response.text.splitlines()]
    assert [p["response"] for p in parts] == [" w0", " w1"]
    assert (done["done"], done["done_reason"], done["prompt_eval_count"], done["eval_count"]) == (
        True,
        "length",
        3,
        2,
    )


# -- faults -----------------------------------------------------------------------------------


def test_fault_header_syntax() -> None:
    assert Fault.parse("reset;after=5") == Fault("reset", after_tokens=5)
    assert Fault.parse("http_error; status=429") == Fault("http_error", status=429)
    assert Fault.parse("stall;after=2;seconds=0.5") == Fault("stall", 2, seconds=0.5)
    assert (Fault("stall").delay, Fault("slow_first_token").delay) == (60.0, 1.0)
    with pytest.raises(ValueError, match="Unknown fault kind"):
        Fault.parse("explode")
    with pytest.raises(ValueError, match="Bad fault option"):
        Fault.parse("reset;later=1")


def test_bad_fault_header_is_a_400_in_the_provider_format(up: Upstream) -> None:
    response = httpx.post(
        up.url + "/v1/messages",
        json=ENDPOINTS["anthropic"][1],
        headers={"x-upstream-fault": "explode"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_queued_faults_apply_to_one_request_each_in_order(up: Upstream) -> None:
    up.add_fault(Fault("http_error", status=429))
    up.add_fault(Fault("http_error", status=503))
    path, body = ENDPOINTS["openai-chat"]
    headers = {"x-upstream-tokens": "1"}
    statuses = [httpx.post(up.url + path, json=body, headers=headers) for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 503, 200]
    assert statuses[0].headers["retry-after"] == "0"
    assert statuses[0].json()["error"]["code"] == "rate_limit_exceeded"
    records = up.wait_for_requests(3)
    assert [r.outcome for r in records[:2]] == ["http_error", "http_error"]
    assert records[0].fault == Fault("http_error", status=429)


def test_reset_fault_breaks_the_connection_after_n_tokens(up: Upstream) -> None:
    path, body = ENDPOINTS["openai-chat"]
    headers = {"x-upstream-fault": "reset;after=3"}
    received = 0
    error: Exception | None = None
    with (
        httpx.Client() as client,
        client.stream("POST", up.url + path, json=body, headers=headers) as response,
    ):
        try:
            for line in response.iter_lines():
                received += '" w' in line
        except httpx.TransportError as exc:
            error = exc
    # A reset, not a clean end: the client is told the connection broke.
    assert isinstance(error, httpx.ReadError)
    assert "Connection reset by peer" in str(error)
    assert received == 3
    record = only_record(up)
    assert (record.outcome, record.tokens_generated) == ("reset", 3)


def test_malformed_fault_sends_invalid_json_then_goes_on(up: Upstream) -> None:
    up.add_fault(Fault("malformed", after_tokens=1))
    lines = post_lines(up, "/api/chat", ENDPOINTS["ollama-chat"][1], {"x-upstream-tokens": "3"})
    assert lines[1] == '{"malformed": '
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1])
    assert [json.loads(line)["message"]["content"] for line in lines[2:]] == [" w1", " w2", ""]


def test_stall_fault_stops_generating_until_the_client_leaves(up: Upstream) -> None:
    path, body = ENDPOINTS["mistral"]
    headers = {"x-upstream-fault": "stall;after=2"}
    with (
        httpx.Client() as client,
        client.stream("POST", up.url + path, json=body, headers=headers) as response,
    ):
        lines = response.iter_lines()  # kept: leaving a for loop over it would close it
        received = 0
        while received < 2:
            received += '" w' in next(lines)
        time.sleep(20 * INTERVAL)
        (record,) = up.requests
        assert (record.outcome, record.tokens_generated) == ("running", 2)
    assert record.wait_done(5.0)
    assert (record.outcome, record.tokens_generated) == ("disconnected", 2)


def test_slow_first_token_fault_delays_only_the_first_token(up: Upstream) -> None:
    headers = {"x-upstream-fault": "slow_first_token;seconds=0.2", "x-upstream-tokens": "3"}
    post_lines(up, *ENDPOINTS["gemini"], headers)
    record = only_record(up)
    assert record.token_times_ns[0] - record.started_ns >= 200 * MS
    assert record.token_times_ns[2] - record.token_times_ns[0] < 100 * MS


def test_unknown_path_is_404_and_named_when_waiting_times_out(up: Upstream) -> None:
    assert httpx.post(up.url + "/v2/chat", json={}).status_code == 404
    with pytest.raises(TimeoutError, match="POST /v2/chat"):
        up.wait_for_requests(1, timeout=0.05)
