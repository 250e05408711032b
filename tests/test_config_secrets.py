"""Configuration errors never echo a value that may be a secret; a bad ledger path fails at
``instrument()`` naming its variable."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import streamguard
from streamguard.exceptions import ConfigurationError

SECRET = bytes(range(100, 132))
FORMS = [SECRET.hex(), base64.b64encode(SECRET).decode(), base64.urlsafe_b64encode(SECRET).decode()]


@pytest.mark.parametrize("secret", FORMS, ids=["hex", "base64", "base64url"])
def test_hmac_secret_put_in_the_key_file_variable_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("STREAMGUARD_SIGNING_KEY_FILE", secret)
    with pytest.raises(ConfigurationError) as info:
        streamguard.instrument()
    text = "".join([str(info.value), repr(info.value), *traceback.format_exception(info.value)])
    assert secret not in text
    assert secret[:12] not in text
    assert info.value.variable == "STREAMGUARD_SIGNING_KEY_FILE"
    assert "goes in STREAMGUARD_SIGNING_KEY;" in str(info.value)
    assert not streamguard.is_instrumented()


def test_verify_does_not_echo_a_secret_put_in_the_verify_key_file_variable(tmp_path: Path) -> None:
    ledger = tmp_path / "r.jsonl"
    ledger.write_text("{}\n")
    env = {**os.environ, "STREAMGUARD_VERIFY_KEY_FILE": FORMS[1]}
    env.pop("STREAMGUARD_SIGNING_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "verify", str(ledger)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "STREAMGUARD_VERIFY_KEY_FILE does not name an existing file" in result.stderr
    assert FORMS[1][:12] not in result.stdout + result.stderr


def test_a_missing_key_file_path_is_not_echoed_either(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGUARD_SIGNING_KEY_FILE", "/no/such/dir/key.pem")
    with pytest.raises(ConfigurationError, match="does not name an existing file") as info:
        streamguard.instrument()
    assert "/no/such/dir" not in str(info.value)
    assert "looks like key material" not in str(info.value)  # a path, so no such hint


def test_an_existing_unreadable_key_file_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "key.pem"
    directory.mkdir()  # exists, cannot be read as a file: the path is a path, so it is shown
    with pytest.raises(ConfigurationError, match="cannot be read") as info:
        streamguard.instrument(signing_key_file=str(directory))
    assert str(directory) in str(info.value)


def test_unwritable_ledger_path_fails_at_instrument_naming_the_variable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="STREAMGUARD_LEDGER_PATH") as info:
        streamguard.instrument(signing_key=SECRET, ledger_path=str(blocker / "receipts.jsonl"))
    assert info.value.variable == "STREAMGUARD_LEDGER_PATH"
    assert not streamguard.is_instrumented()
