"""A pytest plugin that runs a provider SDK's own test suite with StreamGuard instrumented.

``make sdk-suites`` runs the openai and anthropic release sdists' suites twice, plain and with
``-p streamguard.testing.sdk_suite_plugin``, and compares the outcomes per test id
(scripts/sdk_suites/). The plugin calls ``streamguard.instrument()`` with the default options
(and a signing key, as a deployment has) before pytest loads the suite's conftest files, so
every client the suite builds is guarded exactly as an application's would be; nothing in the
SDK is patched beyond what ``instrument()`` itself does. Under xdist, ``-p`` reaches every
worker, and each instruments its own process.

Every receipt is kept in memory and counted. At the end of the session the plugin prints the
count, and writes it (one JSON line per process, so xdist workers add up) to the file named by
``STREAMGUARD_SDK_SUITE_REPORT`` when that is set: a guarded run that guarded no stream
proves nothing, and the comparison refuses it.

    python -m pytest -p streamguard.testing.sdk_suite_plugin tests -k stream
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import pytest

import streamguard
from streamguard.testing.sinks import InMemoryReceiptSink

__all__ = ["REPORT_ENV"]

REPORT_ENV = "STREAMGUARD_SDK_SUITE_REPORT"

_sink = InMemoryReceiptSink()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: Any, args: Any) -> None:
    # The first hook pytest calls on a plugin given with -p, before it imports the suite's
    # conftest.py (which imports the SDK and may build clients at import time).
    # A deployed application configures a signing key; without one StreamGuard warns that its
    # receipts cannot be verified later, and the suites turn every warning into an error.
    streamguard.instrument(sinks=[_sink], signing_key=secrets.token_hex(32))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"streamguard: instrumented; {len(_sink.receipts)} receipts (guarded streams)"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(path, "a", encoding="utf-8") as report:
            report.write(json.dumps({"worker": worker, "receipts": len(_sink.receipts)}) + "\n")
    streamguard.uninstrument()
