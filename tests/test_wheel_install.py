"""Installed as a user installs it: the built wheel in a fresh venv with only ``[openai]``.

Every CLI command and optional feature either works there or stops with one line naming the
extra to install, never a traceback; and the OTel SDK is not pulled in (an instrumentation
library depends on the OTel API only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "test.txt"

pytestmark = pytest.mark.timeout(300)

# Receipts from the installed wheel alone: a custom producer through StreamSession, signed
# with the key and written to the ledger named in the environment. No SDK is imported.
PRODUCE = """
import asyncio
from streamguard import StreamSession

class Producer:
    async def run(self, *, out_q, cancel_event, stats):
        for i in range(20):
            if cancel_event.is_set():
                return
            await out_q.put(f" token{i}")

async def main():
    for cut in (None, 5):
        session = StreamSession(producer=Producer(), N=5, M=2, stats={})
        session.start()
        seen = 0
        async for _ in session:
            seen += 1
            if seen == cut:
                break
        receipt = await session.shutdown()
        print(receipt.reason)

asyncio.run(main())
"""


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        pytest.fail("uv is missing: `make test` installs it from requirements/bootstrap.txt")
    return found


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this tree, installed with ``[openai]`` only
    (constrained to the lock, so it installs what the suite tested)."""
    work = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    subprocess.run(
        [_uv(), "build", "-q", "--wheel", "--out-dir", str(work / "dist"), str(ROOT)],
        check=True,
        env=env,
    )
    (wheel,) = (work / "dist").glob("streamguard-*.whl")
    venv = work / "venv"
    subprocess.run([_uv(), "venv", "-q", "-p", sys.executable, str(venv)], check=True, env=env)
    subprocess.run(
        [_uv(), "pip", "install", "-q", "-c", str(LOCK), f"{wheel}[openai]"],
        check=True,
        env={**env, "VIRTUAL_ENV": str(venv)},
    )
    return venv


def run(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGUARD_", "OTEL_"))}
    clean.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        args,
        cwd=cwd,
        env={**clean, "PATH": f"{venv / 'bin'}:{clean.get('PATH', '')}", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_naming(result: subprocess.CompletedProcess[str], extra: str) -> None:
    """The process failed with one line that names the extra to install, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f'pip install "streamguard[{extra}]"' in lines[0], lines[0]


def test_the_wheel_does_not_pull_the_otel_sdk(user_venv: Path, tmp_path: Path) -> None:
    probe = run(
        user_venv,
        "python",
        "-c",
        "import importlib.util as u; print(bool(u.find_spec('opentelemetry.sdk')), "
        "bool(u.find_spec('opentelemetry')), bool(u.find_spec('openai')))",
        cwd=tmp_path,
    )
    assert probe.stdout.split() == ["False", "True", "True"], probe


def test_demo_without_its_extra_names_it_in_one_line(user_venv: Path, tmp_path: Path) -> None:
    one_line_naming(run(user_venv, "streamguard", "demo", cwd=tmp_path), "demo")


def test_keygen_verify_and_report_work_from_the_wheel(user_venv: Path, tmp_path: Path) -> None:
    keys = run(user_venv, "streamguard", "keygen", "sign.pem", "verify.pem", cwd=tmp_path)
    assert keys.returncode == 0, keys.stderr
    assert (tmp_path / "sign.pem").exists() and (tmp_path / "verify.pem").exists()

    produced = run(
        user_venv,
        "python",
        "-c",
        PRODUCE,
        cwd=tmp_path,
        STREAMGUARD_SIGNING_KEY_FILE="sign.pem",
        STREAMGUARD_KEY_ID="wheel",
        STREAMGUARD_LEDGER_PATH="ledger.jsonl",
    )
    assert produced.returncode == 0, produced.stderr
    assert produced.stdout.split() == ["completed", "shutdown"], produced.stdout

    verified = run(
        user_venv, "streamguard", "verify", "ledger.jsonl", "--key", "verify.pem", cwd=tmp_path
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    reported = run(
        user_venv, "streamguard", "report", "ledger.jsonl", "--html", "r.html", cwd=tmp_path
    )
    assert reported.returncode == 0, reported.stderr
    assert "<svg" in (tmp_path / "r.html").read_text()
    as_json = run(user_venv, "streamguard", "report", "ledger.jsonl", "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    (day,) = json.loads(as_json.stdout)["by_day"].values()
    assert day["streams"] == 2


@pytest.mark.parametrize(
    ("code", "extra"),
    [
        ("import streamguard; streamguard.configure_otel()", "otlp"),
        ("import streamguard.integrations.fastapi", "fastapi"),
        ("from streamguard.testing import Upstream", "testing"),
        ("import streamguard; streamguard.instrument(redis_url='redis://127.0.0.1:1')", "redis"),
    ],
    ids=["configure_otel", "fastapi", "testing", "redis"],
)
def test_a_missing_extra_is_one_clear_error(
    user_venv: Path, tmp_path: Path, code: str, extra: str
) -> None:
    """From Python the missing extra is one exception, MissingExtraError (a ConfigurationError
    and an ImportError), whose one-line message names the extra."""
    probe = (
        "import sys\n"
        "from streamguard import MissingExtraError\n"
        "try:\n"
        + "".join(f"    {line}\n" for line in code.split("; "))
        + "except MissingExtraError as exc:\n"
        "    print(exc, file=sys.stderr); sys.exit(3)\n"
    )
    result = run(user_venv, "python", "-c", probe, cwd=tmp_path, STREAMGUARD_SIGNING_KEY="ab" * 32)
    assert result.returncode == 3, result.stdout + result.stderr
    one_line_naming(result, extra)
