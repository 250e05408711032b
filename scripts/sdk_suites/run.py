"""Run each SDK's own test suite twice, plain and with StreamGuard, and compare (make sdk-suites).

    python scripts/sdk_suites/run.py --dir .sdk-suites --scope streaming openai anthropic

``DIR/NAME/src`` is the SDK's release sdist, unpacked, and ``DIR/NAME/venv`` the venv the
Makefile built from requirements/sdk-suites/NAME.txt (the suite's own locked test deps, the SDK
installed from that sdist, StreamGuard editable). For each SDK the stand-in mock server
(mock_server.py) is started on a free loopback port and the suite is pointed at it with
``TEST_API_BASE_URL``, as the SDK's own scripts/test does for its mock server; then pytest runs
the suite from the sdist directory (its own pytest config and conftest files) twice:

- plain;
- guarded: ``-p streamguard.testing.sdk_suite_plugin``, which calls
  ``streamguard.instrument()`` before the suite's conftest imports the SDK.

Both runs use ``-p no:cacheprovider`` and ``-n 2`` (the suites' own config runs them under
xdist with ``-n auto``; this machine kind has 2 cores). compare.py then fails the target when a
test that passes plain does not pass guarded, naming each. Exit status: 0 when every suite
compares clean, 1 otherwise.

Scopes (``--scope``, ``SDK_SUITES_SCOPE`` in the Makefile):

- ``streaming`` (CI's default): every test whose id says "stream" (the SSE tests of every
  generated resource, ``tests/lib`` streaming helpers, the client's stream handling) except
  ``test_streaming_response_*`` (``with_streaming_response`` of non-streamed endpoints, no SSE:
  they need the API spec's example bodies, which the stand-in cannot serve, and fail plain),
  plus anthropic's telemetry tests (its own spans end in ``Stream.close()``).
- ``full``: the whole suite.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # a sibling script, found through the path set above

HERE = Path(__file__).resolve().parent
STREAMING = "stream and not test_streaming_response"
SELECTION = {
    "streaming": {
        "openai": ["-k", STREAMING],
        "anthropic": ["-k", f"({STREAMING}) or open_telemetry"],
    },
    "full": {},
}
PLUGIN = "streamguard.testing.sdk_suite_plugin"
# pytest's own exit codes: 0 all passed, 1 some failed; anything else means the run itself broke.
_RAN = (0, 1)


def start_mock(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / "mock.port"
    port_file.unlink(missing_ok=True)
    log = (workdir / "mock.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, str(HERE / "mock_server.py"), str(port_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text(encoding="utf-8"):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the mock server did not start; see {workdir / 'mock.log'}")
        time.sleep(0.05)
    return server, int(port_file.read_text(encoding="utf-8"))


def suite_env(port: int) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        # The machine's own settings must not change a result: no provider keys or base URLs,
        # no StreamGuard options (the guarded run uses instrument()'s defaults).
        if not name.startswith(("OPENAI_", "ANTHROPIC_", "STREAMGUARD_", "PYTEST_", "VIRTUAL_ENV"))
    }
    env["TEST_API_BASE_URL"] = f"http://127.0.0.1:{port}"
    env["DEFER_PYDANTIC_BUILD"] = "false"  # as the openai suite's scripts/test sets it
    return env


def run_suite(name: str, root: Path, scope: str) -> bool:
    workdir = root / name
    python = workdir / "venv" / "bin" / "python"
    source = workdir / "src"
    args = [
        str(python),
        "-m",
        "pytest",
        "-q",
        "--tb=line",
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        *SELECTION[scope].get(name, []),
    ]
    server, port = start_mock(workdir)
    try:
        env = suite_env(port)
        runs: dict[str, Path] = {}
        for mode in ("plain", "guarded"):
            junit = workdir / f"{mode}.xml"
            junit.unlink(missing_ok=True)
            extra = ["--junitxml", str(junit)]
            mode_env = dict(env)
            if mode == "guarded":
                report = workdir / "guarded.report"
                report.unlink(missing_ok=True)
                mode_env["STREAMGUARD_SDK_SUITE_REPORT"] = str(report)
                extra = ["-p", PLUGIN, *extra]
            started = time.monotonic()
            with (workdir / f"{mode}.log").open("wb") as log:
                code = subprocess.call(
                    [*args, *extra], cwd=source, env=mode_env, stdout=log, stderr=subprocess.STDOUT
                )
            took = time.monotonic() - started
            print(f"{name} ({scope}, {mode}): pytest exit {code} in {took:.0f} s")
            if code not in _RAN or not junit.exists():
                print(f"{name}: the {mode} run did not complete; see {workdir / f'{mode}.log'}")
                return False
            runs[mode] = junit
    finally:
        server.terminate()
        server.wait(timeout=10)
    return compare.compare(name, runs["plain"], runs["guarded"], workdir / "guarded.report")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--scope", choices=sorted(SELECTION), default="streaming")
    parser.add_argument("names", nargs="+")
    options = parser.parse_args()
    started = time.monotonic()
    results = [run_suite(name, options.dir.resolve(), options.scope) for name in options.names]
    print(f"sdk-suites ({options.scope}): {time.monotonic() - started:.0f} s in all")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
