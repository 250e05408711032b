"""Forked workers of uWSGI and Celery's prefork pool, for real (docs/forking.md).

uWSGI (``--master --processes 2 --enable-threads``) serves ``_fork_app:wsgi_app`` with the
two set-ups docs/forking.md names: ``--py-call-uwsgi-fork-hooks`` (the app, and
``instrument()``, loaded in the master before the fork, whose Python fork hooks uWSGI then runs)
and ``--lazy-apps`` (each worker loads the app after the fork). In every worker close, stall and
a cancel by id through a real ``redis-server`` stop the upstream; the receipts of all workers go
into one ledger file on chains of their own, and plain ``streamguard verify`` accepts it.

Celery's prefork pool (``tests/_celery_app.py``, two pool processes, the real redis-server as
broker and result backend): tasks in both pool processes stream and close, and their receipts
share one verifiable ledger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import streamguard
from conftest import _free_port
from streamguard._receipts.signing import HmacSigner
from streamguard.testing import Upstream
from test_forked_workers import (
    KEY,
    REASONS,
    _check_stopped,
    _receipts,
    _serve_every_mode_in_both_workers,
    _serving,
    _verify,
)

TESTS = Path(__file__).resolve().parent
UWSGI = Path(sys.executable).parent / "uwsgi"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(token_interval=0.01) as up:
        yield up


@contextlib.contextmanager
def _uwsgi(mode: str, env: dict[str, str]) -> Iterator[str]:
    if not UWSGI.exists():
        pytest.skip("uwsgi is not installed (pip install uwsgi: it builds with the C compiler)")
    port = _free_port()
    cmd = [str(UWSGI), "--master", "--processes", "2", "--enable-threads", "--die-on-term"]
    cmd += ["--http-socket", f"127.0.0.1:{port}", "--chdir", str(TESTS), "--module"]
    cmd += ["_fork_app:wsgi_app", "--virtualenv", sys.prefix, "--disable-logging"]
    cmd += ["--py-call-uwsgi-fork-hooks"] if mode == "fork-hooks" else ["--lazy-apps"]
    proc = subprocess.Popen(
        cmd, cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with _serving(proc, f"http://127.0.0.1:{port}", "uwsgi", startup_s=60) as url:
        yield url


@pytest.mark.slow  # ~20-40 s each: the app imports every SDK
@pytest.mark.parametrize("mode", ["fork-hooks", "lazy-apps"])
def test_uwsgi_workers_stop_upstreams_and_share_one_verifiable_ledger(
    upstream: Upstream, redis_url: str, tmp_path: Path, mode: str
) -> None:
    ledger = tmp_path / "receipts.jsonl"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": upstream.openai_base_url,
        "STREAMGUARD_LEDGER_PATH": str(ledger),
        "STREAMGUARD_SIGNING_KEY": KEY,
        "STREAMGUARD_REDIS_URL": redis_url,
        "STREAMGUARD_STALL_TIMEOUT": "0.3",
        # With the app loaded in the master, the master seals a receipt before it forks.
        "FORK_APP_WARMUP": "1" if mode == "fork-hooks" else "0",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    streamguard.instrument(signer=HmacSigner(bytes(32), key_id="t"), redis_url=redis_url)
    try:
        with _uwsgi(mode, env) as url:
            results = _serve_every_mode_in_both_workers(url, f"uwsgi-{mode}")
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
    assert len(ledger_of_pid) == 2
    assert all(len(ids) == 1 for ids in ledger_of_pid.values()), ledger_of_pid
    assert len(set.union(*ledger_of_pid.values())) == 2  # a chain per worker
    chains = len({r.ledger_id for r in _receipts(ledger)})
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"in {chains} ledger(s)" in verified.stdout


# --- Celery prefork ---------------------------------------------------------------------------


@contextlib.contextmanager
def _celery_worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    cmd = [sys.executable, "-m", "celery", "-A", "_celery_app", "worker", "--pool", "prefork"]
    cmd += ["--concurrency", "2", "-O", "fair", "--loglevel", "warning", "--without-gossip"]
    cmd += ["--without-mingle", "--without-heartbeat"]
    proc = subprocess.Popen(
        cmd, cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: the pool processes end their tasks
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        assert "Traceback" not in output, output


def _celery_round(celery: Any, redis_url: str, mode: str, tags: list[str]) -> list[dict[str, Any]]:
    import redis

    pending = [celery.send_task("_celery_app.stream", args=(mode, tag)) for tag in tags]
    if mode == "cancel":
        r = redis.Redis.from_url(redis_url)
        for tag in tags:
            deadline = time.monotonic() + 60
            while (stream_id := r.get(f"celery-stream:{tag}")) is None:
                assert time.monotonic() < deadline, f"task {tag} never started its stream"
                time.sleep(0.02)
            time.sleep(0.05)  # a few chunks in
            assert streamguard.cancel_stream(stream_id.decode()) is True
        r.close()
    results = [{**p.get(timeout=60), "tag": tag} for p, tag in zip(pending, tags, strict=True)]
    for p in pending:
        p.forget()
    return results


@pytest.mark.slow  # ~20-40 s: the worker imports every SDK (instrument) before it forks
def test_celery_prefork_pool_processes_stop_upstreams_and_share_one_verifiable_ledger(
    upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    celery_mod = pytest.importorskip("celery")
    ledger = tmp_path / "receipts.jsonl"
    env = {
        **os.environ,
        "CELERY_REDIS_URL": redis_url,
        "OPENAI_BASE_URL": upstream.openai_base_url,
        "STREAMGUARD_LEDGER_PATH": str(ledger),
        "STREAMGUARD_SIGNING_KEY": KEY,
        "STREAMGUARD_REDIS_URL": redis_url,
        "STREAMGUARD_STALL_TIMEOUT": "0.3",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    celery = celery_mod.Celery(broker=redis_url, backend=redis_url)
    streamguard.instrument(signer=HmacSigner(bytes(32), key_id="t"), redis_url=redis_url)
    results: list[dict[str, Any]] = []
    try:
        with _celery_worker(env):
            for mode in ("close", "stall", "cancel"):
                for attempt in range(8):
                    tags = [f"celery-{mode}-{attempt}-{i}" for i in range(2)]
                    results += _celery_round(celery, redis_url, mode, tags)
                    if len({r["pid"] for r in results if r["mode"] == mode}) == 2:
                        break
                else:
                    pytest.fail(f"mode {mode}: every task ran in the same pool process")
    finally:
        streamguard.uninstrument()
        celery.close()

    receipts = {r.stream_id: r for r in _receipts(ledger)}
    ledger_of_pid: dict[int, set[str]] = {}
    for result in results:
        receipt = receipts[result["stream_id"]]
        ledger_of_pid.setdefault(result["pid"], set()).add(receipt.ledger_id)
        _check_stopped(upstream, result["tag"], receipt, REASONS[result["mode"]])
        if result["mode"] == "cancel":
            assert result["ended"] == {"ended": "cancelled", "reason": "manual"}
    assert len(ledger_of_pid) == 2
    assert all(len(ids) == 1 for ids in ledger_of_pid.values()), ledger_of_pid
    assert len(set.union(*ledger_of_pid.values())) == 2  # a chain per pool process
    verified = _verify(ledger)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{len(results)} receipt(s) in 2 ledger(s)" in verified.stdout
