"""Forked workers: gunicorn --preload (sync and uvicorn workers) and a bare os.fork().

Each worker must stop its upstream on close, stall and a cancel by id through a real Redis,
write its receipts into the one shared ledger file on a chain of its own, and that file must
pass plain ``streamguard verify``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import streamguard
from conftest import _free_port
from providers._harness import check_upstream_stopped, guard_stop_mono
from streamguard._receipts.model import Receipt
from streamguard._receipts.signing import HmacSigner
from streamguard.testing import RequestRecord, Upstream

# Python 3.12+ warns when a multi-threaded process forks (pytest's process is one); forking
# is what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore:This process .*multi-threaded:DeprecationWarning")

TESTS = Path(__file__).resolve().parent
KEY = "22" * 32
REASONS = {"close": "consumer_closed", "stall": "consumer_stalled", "cancel": "manual"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.01) as up:
        yield up


def _receipts(ledger: Path) -> list[Receipt]:
    return [Receipt.from_dict(json.loads(line)) for line in ledger.read_text().splitlines()]


def _verify(ledger: Path) -> subprocess.CompletedProcess[str]:
    """Plain ``streamguard verify`` (no --sort, no --partial), in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "verify", "--hmac-key", KEY, str(ledger)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _record(upstream: Upstream, tag: str) -> RequestRecord:
    (record,) = [r for r in upstream.requests if r.headers.get("x-test-tag") == tag]
    assert record.wait_done(5), f"the upstream request {tag} never ended"
    return record


def _check_stopped(upstream: Upstream, tag: str, receipt: Receipt, reason: str) -> None:
    assert receipt.reason == reason, (tag, receipt.reason, receipt.detail)
    record = _record(upstream, tag)
    check_upstream_stopped(record, guard_stop_mono(receipt, record))


# --- gunicorn ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _gunicorn(app: str, worker_class: str, env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            "2",
            "--worker-class",
            worker_class,
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
            app,
        ],
        cwd=TESTS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with _serving(proc, f"http://127.0.0.1:{port}", "gunicorn", startup_s=30) as url:
        yield url


@contextlib.contextmanager
def _serving(
    proc: subprocess.Popen[str], url: str, name: str, *, startup_s: float
) -> Iterator[str]:
    """Waits until the server ``proc`` answers ``url/ping``, yields ``url``, then stops it with
    SIGTERM; what it printed must hold no traceback."""
    output = ""
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                httpx.get(url + "/ping", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"{name} did not start: {proc.communicate()[0]}")
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    assert "Traceback" not in output, output


def _request(url: str, mode: str, tag: str) -> dict[str, Any]:
    """One /stream request; for ``cancel``, cancel it by id from this process after 5 chunks."""
    result: dict[str, Any] = {"mode": mode, "tag": tag}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("GET", f"{url}/stream", params={"mode": mode, "tag": tag}) as response,
    ):
        lines = response.iter_lines()
        result.update(json.loads(next(lines)))
        for line in lines:
            data = json.loads(line)
            if data.get("chunk") == 5:
                result["cancelled"] = streamguard.cancel_stream(result["stream_id"])
            if "ended" in data:
                result.setdefault("ended", data)
    return result


def _serve_every_mode_in_both_workers(url: str, prefix: str) -> list[dict[str, Any]]:
    """Two concurrent requests per mode and round, until each mode ran in two workers."""
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(2) as pool:
        for mode in ("close", "stall", "cancel"):
            for attempt in range(12):
                tags = [f"{prefix}-{mode}-{attempt}-{i}" for i in range(2)]
                results += pool.map(partial(_request, url, mode), tags)
                if len({r["pid"] for r in results if r["mode"] == mode}) == 2:
                    break
            else:
                pytest.fail(f"mode {mode}: every request went to the same worker")
    return results


@pytest.mark.slow  # ~20-35 s each: gunicorn's master imports every SDK (instrument) first
@pytest.mark.parametrize(
    ("worker_class", "app"),
    [("sync", "_fork_app:wsgi_app"), ("uvicorn_worker.UvicornWorker", "_fork_app:asgi_app")],
    ids=["sync", "uvicorn"],
)
def test_gunicorn_preload_workers_stop_upstreams_and_share_one_verifiable_ledger(
    upstream: Upstream, redis_url: str, tmp_path: Path, worker_class: str, app: str
) -> None:
    ledger = tmp_path / "receipts.jsonl"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": upstream.openai_base_url,
        "STREAMGUARD_LEDGER_PATH": str(ledger),
        "STREAMGUARD_SIGNING_KEY": KEY,
        "STREAMGUARD_REDIS_URL": redis_url,
        "STREAMGUARD_STALL_TIMEOUT": "0.3",
        "FORK_APP_WARMUP": "1",  # the master seals a receipt before it forks the workers
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    streamguard.instrument(signer=HmacSigner(bytes(32), key_id="t"), redis_url=redis_url)
    try:
        with _gunicorn(app, worker_class, env) as url:
            results = _serve_every_mode_in_both_workers(url, worker_class)
    finally:
        streamguard.uninstrument()

    receipts = {r.stream_id: r for r in _receipts(ledger)}
    ledger_of_pid: dict[int, set[str]] = {}
    for result in results:
        receipt = receipts[result["stream_id"]]
        ledger_of_pid.setdefault(result["pid"], set()).add(receipt.ledger_id)
        _check_stopped(upstream, result["tag"], receipt, REASONS[result["mode"]])
        if result["mode"] == "cancel":
            assert result["cancelled"] is True
            assert result["ended"] == {"ended": "cancelled", "reason": "manual"}
    # Every worker wrote its own chain into the one file; the master's warm-up chain is a third.
    assert len(ledger_of_pid) == 2
    assert all(len(ids) == 1 for ids in ledger_of_pid.values()), ledger_of_pid
    worker_ledgers = set.union(*ledger_of_pid.values())
    assert len(worker_ledgers) == 2
    (warmup,) = [r for r in _receipts(ledger) if r.reason == "completed"]
    assert warmup.ledger_id not in worker_ledgers and warmup.seq == 0
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{len(results) + 1} receipt(s) in 3 ledger(s)" in verified.stdout


# --- bare os.fork() ---------------------------------------------------------------------------


def _create(client: openai.OpenAI, tag: str, max_tokens: int = 300) -> Any:
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "fork"}],
        max_tokens=max_tokens,
        stream=True,
        extra_headers={"x-test-tag": tag},
    )


class _Count:
    """A StreamSession producer: ``n`` tokens."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def run(self, *, out_q: Any, cancel_event: Any, stats: dict[str, Any]) -> None:
        for i in range(self.n):
            await out_q.put(f" t{i}")


def _session_receipt() -> Receipt | None:
    """A StreamSession started outside any loop: it runs on the background loop."""
    session = streamguard.StreamSession(producer=_Count(5), N=5, M=2, stats={})
    session.start()
    assert list(session) == [f" t{i}" for i in range(5)]
    return session.shutdown_sync()


def _child(client: openai.OpenAI, out: Any, inherited: streamguard.StreamHandle) -> dict[str, Any]:
    """What the forked child does; returns what it saw (sent to the parent as JSON)."""
    seen: dict[str, Any] = {"pid": os.getpid()}
    seen["active_at_start"] = len(streamguard.active_streams())
    # The parent's stream is not the child's: cancelling its handle here does nothing.
    seen["inherited_cancel"] = inherited.cancel()
    gc.collect()
    # The parent's background loop thread does not exist here: the child starts its own.
    session = _session_receipt()
    seen["session"] = None if session is None else session.outcome
    ids: dict[str, str] = {}
    # close
    stream = _create(client, "child-close")
    for i, _chunk in enumerate(stream):
        if i == 4:
            break
    stream.close()
    ids["close"] = streamguard.handle_of(stream).stream_id  # type: ignore[union-attr]
    # stall: the consumer keeps the stream and stops pulling; the child's own watchdog cuts it
    stream = _create(client, "child-stall")
    for i, _chunk in enumerate(stream):
        if i == 4:
            break
    handle = streamguard.handle_of(stream)
    assert handle is not None
    ids["stall"] = handle.stream_id
    handle.wait_receipt(5)
    del stream
    # cancel by id from the parent, through Redis
    stream = _create(client, "child-cancel")
    handle = streamguard.handle_of(stream)
    assert handle is not None
    ids["cancel"] = handle.stream_id
    try:
        for i, _chunk in enumerate(stream):
            if i == 4:
                out.write(json.dumps({"cancel": ids["cancel"]}) + "\n")
                out.flush()
    except streamguard.StreamCancelled as exc:
        seen["cancel_raised"] = exc.reason
    # The listener thread seals the cancelled stream's receipt; os._exit would not wait for it.
    handle.wait_receipt(5)
    seen["ids"] = ids
    seen["ledger_id"] = _ledger_id()
    return seen


def _ledger_id() -> str:
    from streamguard._runtime import get_runtime

    return get_runtime().ledger.ledger_id


def test_bare_fork_child_gets_its_own_chain_watchdog_and_cancel_listener(
    upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "receipts.jsonl"
    streamguard.instrument(
        signing_key=KEY, ledger_path=str(ledger), redis_url=redis_url, stall_timeout=0.5
    )
    child_pid = 0
    try:
        client = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
        for _chunk in _create(client, "parent-before", max_tokens=5):
            pass
        assert _session_receipt() is not None  # the parent's background loop is running
        parent_ledger = _ledger_id()
        # A stream the parent's thread is reading while the process forks: the child must
        # neither close its socket (shared with the parent) nor seal a receipt for it.
        across = _create(client, "parent-across", max_tokens=150)
        inherited = streamguard.handle_of(across)
        assert inherited is not None
        reader = threading.Thread(target=lambda: [None for _ in across])
        reader.start()
        time.sleep(0.1)
        read_fd, write_fd = os.pipe()
        child_pid = os.fork()
        if child_pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.close(read_fd)
                with os.fdopen(write_fd, "w") as out:
                    try:
                        seen = _child(client, out, inherited)
                        code = 0
                    except BaseException as exc:
                        seen = {"error": repr(exc)}
                    out.write(json.dumps({"done": seen}) + "\n")
            finally:
                os._exit(code)
        os.close(write_fd)
        done: dict[str, Any] = {}
        with os.fdopen(read_fd) as messages:
            for line in messages:
                message = json.loads(line)
                if "cancel" in message:
                    done["cancelled"] = streamguard.cancel_stream(message["cancel"])
                else:
                    done.update(message["done"])
        _, status = os.waitpid(child_pid, 0)
        child_pid = 0
        assert "error" not in done, done["error"]
        assert os.waitstatus_to_exitcode(status) == 0
        reader.join(10)
        parent_across = inherited.wait_receipt(5)
    finally:
        if child_pid:
            os.kill(child_pid, signal.SIGKILL)
        streamguard.uninstrument()

    assert done["pid"] != os.getpid()
    assert (done["active_at_start"], done["inherited_cancel"]) == (0, False)
    assert done["session"] == "completed"
    assert done["cancelled"] is True and done["cancel_raised"] == "manual"
    child_ledger = done["ledger_id"]
    assert isinstance(child_ledger, str) and child_ledger != parent_ledger
    by_id = {r.stream_id: r for r in _receipts(ledger)}
    for mode, stream_id in done["ids"].items():
        receipt = by_id[stream_id]
        assert receipt.ledger_id == child_ledger
        _check_stopped(upstream, f"child-{mode}", receipt, REASONS[mode])
    assert [r.seq for r in _receipts(ledger) if r.ledger_id == child_ledger] == [0, 1, 2, 3]
    # The parent's stream ran to its end in the parent, with exactly one receipt, the parent's.
    assert parent_across is not None and parent_across.reason == "completed"
    assert _record(upstream, "parent-across").completed
    across_receipts = [r for r in _receipts(ledger) if r.stream_id == inherited.stream_id]
    assert [(r.ledger_id, r.seq) for r in across_receipts] == [(parent_ledger, 2)]
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "7 receipt(s) in 2 ledger(s)" in verified.stdout


def test_redis_budget_store_serves_a_forked_child_on_connections_of_its_own(
    redis_url: str,
) -> None:
    from streamguard._config import Options
    from streamguard._runtime import Runtime

    runtime = Runtime(
        Options.resolve({"redis_url": redis_url}, environ={}),
        signer=HmacSigner(bytes(32), key_id="t"),
    )
    store = runtime.budget_store
    key = f"fork-{os.getpid()}-{time.monotonic_ns()}"
    try:
        assert store.reserve(key, 100, 1_000, None) == 100  # the parent's pool holds a socket
        parent_client = store._client
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the at-fork hook gave the child's runtime a client of its own
            code = 1
            try:
                os.close(read_fd)
                child_store = runtime.budget_store
                granted = child_store.reserve(key, 200, 1_000, None)
                fresh = child_store is store and child_store._client is not parent_client
                os.write(write_fd, json.dumps([granted, fresh]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            granted, fresh = json.loads(f.read())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (granted, fresh) == (200, True)
        # The parent's own connection still works after the child used and dropped its copy.
        assert store.usage(key) == (0, 300)
    finally:
        runtime.shutdown()
        store.close()


def test_a_fork_while_other_threads_hold_the_locks_leaves_the_child_working(
    tmp_path: Path,
) -> None:
    """Another thread holds the registry and ledger-file locks at the instant of the fork (it
    is sealing a receipt): the child, where that thread does not exist, still seals its own
    receipts, on a chain whose id derives from the configured one."""
    from streamguard._config import Options
    from streamguard._engine.core import StreamCore
    from streamguard._engine.reasons import StopReason
    from streamguard._runtime import Runtime

    ledger = tmp_path / "receipts.jsonl"
    runtime = Runtime(
        Options.resolve({"ledger_id": "svc", "ledger_path": str(ledger)}, environ={}),
        signer=HmacSigner(bytes.fromhex(KEY), key_id="t"),
    )
    (sink,) = runtime.sinks
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with runtime._lock, sink._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            signal.alarm(20)  # a deadlock must fail the test, not hang it
            core = StreamCore(runtime, provider="openai", model="m")
            core.request_stop(StopReason.MANUAL, "child")
            receipt = core.wait_final(5)
            assert receipt is not None
            os.write(write_fd, json.dumps([receipt.ledger_id, receipt.seq]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            child_ledger, child_seq = json.loads(f.read() or "[null, null]")
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join(10)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_ledger.startswith("svc-") and child_seq == 0
    core = StreamCore(runtime, provider="openai", model="m")
    core.request_stop(StopReason.MANUAL, "parent")
    parent_receipt = core.wait_final(5)
    runtime.shutdown()
    assert parent_receipt is not None
    assert (parent_receipt.ledger_id, parent_receipt.seq) == ("svc", 0)
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 receipt(s) in 2 ledger(s)" in verified.stdout


def _mp_child(base_url: str, results: Any) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)
    stream = _create(client, "mp-child-close")
    for i, _chunk in enumerate(stream):
        if i == 2:
            break
    stream.close()
    handle = streamguard.handle_of(stream)
    assert handle is not None
    receipt = handle.wait_receipt(5)
    assert receipt is not None
    results.put((handle.stream_id, receipt.ledger_id, receipt.reason))


def test_multiprocessing_fork_child_seals_on_its_own_chain(
    upstream: Upstream, tmp_path: Path
) -> None:
    import multiprocessing

    ledger = tmp_path / "receipts.jsonl"
    streamguard.instrument(signing_key=KEY, ledger_path=str(ledger))
    try:
        client = openai.OpenAI(base_url=upstream.openai_base_url, api_key="k", max_retries=0)
        for _chunk in _create(client, "mp-parent", max_tokens=3):
            pass
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        children = [
            context.Process(target=_mp_child, args=(upstream.openai_base_url, results))
            for _ in range(2)
        ]
        for child in children:
            child.start()
        seen = [results.get(timeout=30) for _ in children]
        for child in children:
            child.join(30)
            assert child.exitcode == 0
        parent_ledger = _ledger_id()
    finally:
        streamguard.uninstrument()
    assert {reason for _, _, reason in seen} == {"consumer_closed"}
    assert len({ledger_id for _, ledger_id, _ in seen} | {parent_ledger}) == 3
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "3 receipt(s) in 3 ledger(s)" in verified.stdout


_FORK_AT_ONCE = """
import os, sys
assert "genai_prices" not in sys.modules  # the warm-up thread imports it: the race is open
import streamguard
from streamguard._runtime import get_runtime
streamguard.instrument()
pid = os.fork()  # at once, as gunicorn --preload forks right after the app module loads
if pid == 0:
    price = get_runtime().pricing.price("openai", "gpt-4o-mini")  # what a receipt looks up
    os._exit(0 if price is not None else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_a_fork_right_after_instrument_leaves_the_child_no_held_import_lock() -> None:
    """instrument() loads the price table on a warm-up thread; a child forked while that thread
    imported it used to hang on its first receipt (the module's import lock came along, its
    holder did not). The parent's fork hook lets the warm-up finish first."""
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-c", _FORK_AT_ONCE],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "STREAMGUARD_SIGNING_KEY": "ab" * 32},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["child", "0"], result.stdout + result.stderr
