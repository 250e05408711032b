"""Signers, verifiers and key loading: configuration errors name the variable, keys never leak."""

from __future__ import annotations

import base64
import logging
import os
import stat
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from streamguard._receipts import signing
from streamguard._receipts.model import Signature
from streamguard._receipts.signing import (
    Ed25519Signer,
    Ed25519Verifier,
    HmacSigner,
    HmacVerifier,
    Signer,
    Verifier,
    generate_ed25519_keypair,
    load_signer,
    load_verifier,
)
from streamguard.exceptions import ConfigurationError, EphemeralKeyWarning

SECRET = b"S3cr3t-K3y-Material-0123456789!!"
SECRET_FORMS = (SECRET.decode(), SECRET.hex(), base64.b64encode(SECRET).decode())
DATA = b'{"canonical":"bytes"}'


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """PEM files: an Ed25519 pair, an RSA key, an encrypted key, a non-PEM file, a directory."""
    key = Ed25519PrivateKey.generate()
    paths = {name: tmp_path / f"{name}.pem" for name in ("private", "public", "rsa", "encrypted")}
    paths["private"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["public"].write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    paths["rsa"].write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["encrypted"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    paths["garbage"] = tmp_path / "garbage.pem"
    paths["garbage"].write_text("this is not a key\n")
    paths["missing"] = tmp_path / "missing.pem"
    paths["directory"] = tmp_path
    return paths


@pytest.fixture
def reset_ephemeral_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "_warned", False)


# --- signing and verifying ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
def test_signature_round_trip_and_protocols(kind: str) -> None:
    signer: HmacSigner | Ed25519Signer = (
        HmacSigner(SECRET, "k1")
        if kind == "hmac"
        else Ed25519Signer(Ed25519PrivateKey.generate(), "k1")
    )
    verifier = signer.verifier()
    value = signer.sign(DATA)

    assert isinstance(signer, Signer)
    assert isinstance(verifier, Verifier)
    assert base64.b64encode(base64.b64decode(value, validate=True)).decode() == value
    assert verifier.verify(DATA, Signature(signer.alg, "k1", value))
    assert not verifier.verify(DATA + b" ", Signature(signer.alg, "k1", value))


def test_hmac_signature_is_standard_hmac_sha256() -> None:
    import hashlib
    import hmac

    expected = base64.b64encode(hmac.new(SECRET, DATA, hashlib.sha256).digest()).decode()
    assert HmacSigner(SECRET).sign(DATA) == expected


@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
def test_verifier_returns_false_never_raises_for_bad_signatures(kind: str) -> None:
    if kind == "hmac":
        signer: HmacSigner | Ed25519Signer = HmacSigner(SECRET, "k1")
        other: Verifier = HmacVerifier(b"another-secret-of-enough-length", "k1")
        foreign = Ed25519Verifier(Ed25519PrivateKey.generate().public_key())
    else:
        signer = Ed25519Signer(Ed25519PrivateKey.generate(), "k1")
        other = Ed25519Verifier(Ed25519PrivateKey.generate().public_key(), "k1")
        foreign = HmacVerifier(SECRET)
    good = signer.sign(DATA)
    raw = base64.b64decode(good)
    # Flip an unused low bit of the last base64 digit: same bytes, non-canonical spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = len(good.rstrip("=")) - 1
    stray_bits = good[:last] + alphabet[alphabet.index(good[last]) ^ 1] + good[last + 1 :]
    assert base64.b64decode(stray_bits) == raw and stray_bits != good

    bad_values = ["!!!!", good[:-4], good + "AAAA", base64.b64encode(raw[:-1]).decode()]
    for value in [*bad_values, stray_bits]:
        assert signer.verifier().verify(DATA, Signature(signer.alg, "k1", value)) is False
    assert other.verify(DATA, Signature(signer.alg, "k1", good)) is False
    assert foreign.verify(DATA, Signature(signer.alg, "k1", good)) is False
    assert signer.verifier().verify(DATA, Signature(signer.alg, "k2", good)) is False


@given(value=st.text(max_size=100))
def test_verifiers_never_raise_on_arbitrary_signature_values(value: str) -> None:
    signature_value = value or "x"
    for verifier in (
        HmacVerifier(SECRET),
        Ed25519Verifier(Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key()),
    ):
        assert verifier.verify(DATA, Signature(verifier.alg, "k", signature_value)) is False


def test_key_id_none_accepts_any_key_id_and_a_set_one_must_match() -> None:
    value = HmacSigner(SECRET, "rotated-2").sign(DATA)

    assert HmacVerifier(SECRET).verify(DATA, Signature("hmac-sha256", "rotated-2", value))
    assert not HmacVerifier(SECRET, "rotated-1").verify(
        DATA, Signature("hmac-sha256", "rotated-2", value)
    )


# --- loading keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        SECRET.hex(),
        SECRET.hex().upper(),
        base64.b64encode(SECRET).decode(),
        base64.urlsafe_b64encode(SECRET).decode().rstrip("="),
        f"  {SECRET.hex()}\n",
        SECRET,
    ],
    ids=["hex", "HEX", "base64", "urlsafe-unpadded", "whitespace", "bytes"],
)
def test_hmac_secret_is_accepted_as_hex_base64_or_bytes(secret: str | bytes) -> None:
    signer = load_signer(signing_key=secret, environ={})

    assert signer.sign(DATA) == HmacSigner(SECRET).sign(DATA)
    assert (signer.alg, signer.key_id) == ("hmac-sha256", "default")


def test_signer_from_environment(keys: dict[str, Path]) -> None:
    hmac_signer = load_signer(environ={"STREAMGUARD_SIGNING_KEY": SECRET.hex()})
    ed_signer = load_signer(
        environ={"STREAMGUARD_SIGNING_KEY_FILE": str(keys["private"]), "STREAMGUARD_KEY_ID": "k9"}
    )

    assert (hmac_signer.alg, hmac_signer.key_id) == ("hmac-sha256", "default")
    assert (ed_signer.alg, ed_signer.key_id) == ("ed25519", "k9")
    verifier = load_verifier(verify_key_file=keys["public"], environ={})
    assert verifier.verify(DATA, Signature("ed25519", "k9", ed_signer.sign(DATA)))


def test_arguments_win_over_environment(keys: dict[str, Path]) -> None:
    env = {
        "STREAMGUARD_SIGNING_KEY_FILE": str(keys["private"]),
        "STREAMGUARD_KEY_ID": "from-env",
    }

    signer = load_signer(signing_key=SECRET, key_id="from-arg", environ=env)

    assert (signer.alg, signer.key_id) == ("hmac-sha256", "from-arg")


def test_empty_environment_variables_count_as_unset(reset_ephemeral_warning: None) -> None:
    env = {"STREAMGUARD_SIGNING_KEY": "", "STREAMGUARD_SIGNING_KEY_FILE": ""}
    with pytest.warns(EphemeralKeyWarning):
        assert load_signer(environ=env).key_id.startswith("ephemeral-")


def test_ephemeral_key_warns_once_per_process(
    reset_ephemeral_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="streamguard"):
        with pytest.warns(EphemeralKeyWarning, match="STREAMGUARD_SIGNING_KEY_FILE"):
            first = load_signer(environ={})
        with warnings.catch_warnings(record=True) as later:
            warnings.simplefilter("always")
            second = load_signer(environ={})

    assert first.alg == "ed25519"
    assert first.key_id != second.key_id
    assert first.key_id.startswith("ephemeral-") and len(first.key_id) == len("ephemeral-") + 8
    assert later == []
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "ephemeral" in caplog.records[0].getMessage()


def test_verifier_from_arguments_and_environment(keys: dict[str, Path]) -> None:
    signer = load_signer(signing_key_file=keys["private"], key_id="k1", environ={})
    sig = Signature("ed25519", "k1", signer.sign(DATA))

    from_public = load_verifier(verify_key_file=keys["public"], environ={})
    from_private = load_verifier(verify_key_file=keys["private"], environ={})
    from_env = load_verifier(environ={"STREAMGUARD_VERIFY_KEY_FILE": str(keys["public"])})
    from_signing_env = load_verifier(environ={"STREAMGUARD_SIGNING_KEY_FILE": str(keys["private"])})
    restricted = load_verifier(verify_key_file=keys["public"], key_id="k2", environ={})
    hmac_env = load_verifier(environ={"STREAMGUARD_SIGNING_KEY": SECRET.hex()})

    for verifier in (from_public, from_private, from_env, from_signing_env):
        assert verifier.key_id is None
        assert verifier.verify(DATA, sig)
    assert not restricted.verify(DATA, sig)
    assert hmac_env.verify(DATA, Signature("hmac-sha256", "x", HmacSigner(SECRET).sign(DATA)))


def test_generate_keypair_writes_private_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    private, public = tmp_path / "sg.key", tmp_path / "sg.pub"

    fingerprint = generate_ed25519_keypair(private, public)

    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    signer = load_signer(signing_key_file=private, environ={})
    assert isinstance(signer, Ed25519Signer)
    assert signer.public_key_pem() == public.read_text()
    assert fingerprint in repr(signer)
    verifier = load_verifier(verify_key_file=public, environ={})
    assert verifier.verify(DATA, Signature("ed25519", "default", signer.sign(DATA)))
    with pytest.raises(FileExistsError):
        generate_ed25519_keypair(tmp_path / "new.key", public)
    assert not (tmp_path / "new.key").exists()


# --- configuration errors -----------------------------------------------------------------

# Each case: (name, call) -> the ConfigurationError must name `variable` in .variable and text.
ErrorCase = tuple[str, Callable[[dict[str, Path]], Any], str]

SK, SKF = "STREAMGUARD_SIGNING_KEY", "STREAMGUARD_SIGNING_KEY_FILE"
VKF, KID = "STREAMGUARD_VERIFY_KEY_FILE", "STREAMGUARD_KEY_ID"


def _signer_with(**env: str) -> Callable[[dict[str, Path]], Any]:
    """load_signer with an environment; values naming a key fixture become its path."""
    return lambda k: load_signer(environ={n: str(k.get(v, v)) for n, v in env.items()})


def _verifier_with(**env: str) -> Callable[[dict[str, Path]], Any]:
    return lambda k: load_verifier(environ={n: str(k.get(v, v)) for n, v in env.items()})


CONFIG_ERRORS: list[ErrorCase] = [
    ("env-secret-malformed", _signer_with(**{SK: "not!a!secret!" + SECRET.decode()}), SK),
    ("env-secret-too-short", _signer_with(**{SK: SECRET[:15].hex()}), SK),
    (
        "arg-secret-too-short",
        lambda k: load_signer(signing_key=SECRET[:8], environ={}),
        "signing_key",
    ),
    ("arg-secret-blank", lambda k: load_signer(signing_key="  ", environ={}), "signing_key"),
    ("both-env", _signer_with(**{SK: SECRET.hex(), SKF: "private"}), SK),
    (
        "both-args",
        lambda k: load_signer(signing_key=SECRET, signing_key_file=k["private"]),
        "signing_key",
    ),
    ("file-missing", _signer_with(**{SKF: "missing"}), SKF),
    ("file-directory", _signer_with(**{SKF: "directory"}), SKF),
    ("file-not-pem", _signer_with(**{SKF: "garbage"}), SKF),
    ("file-public-key", _signer_with(**{SKF: "public"}), SKF),
    ("file-rsa", _signer_with(**{SKF: "rsa"}), SKF),
    ("file-encrypted", _signer_with(**{SKF: "encrypted"}), SKF),
    (
        "arg-file-rsa",
        lambda k: load_signer(signing_key_file=k["rsa"], environ={}),
        "signing_key_file",
    ),
    ("key-id-env", _signer_with(**{SK: SECRET.hex(), KID: "has space"}), KID),
    ("key-id-arg", lambda k: load_signer(signing_key=SECRET, key_id="", environ={}), "key_id"),
    ("verify-nothing", _verifier_with(), VKF),
    ("verify-both-env", _verifier_with(**{SK: SECRET.hex(), VKF: "public"}), VKF),
    (
        "verify-both-args",
        lambda k: load_verifier(verify_key_file=k["public"], hmac_key=SECRET),
        "verify_key_file",
    ),
    (
        "verify-file-rsa",
        lambda k: load_verifier(verify_key_file=k["rsa"], environ={}),
        "verify_key_file",
    ),
    ("verify-env-garbage", _verifier_with(**{VKF: "garbage"}), VKF),
    (
        "verify-hmac-short",
        lambda k: load_verifier(hmac_key=SECRET.hex()[:20], environ={}),
        "hmac_key",
    ),
    ("hmac-signer-short", lambda k: HmacSigner(SECRET[:4]), "secret"),
]


@pytest.mark.parametrize(
    ("call", "variable"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_configuration_errors_name_the_variable_and_say_what_to_do(
    keys: dict[str, Path], call: Callable[[dict[str, Path]], Any], variable: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        call(keys)

    assert info.value.variable == variable
    assert variable in str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(info.value).endswith((".", ")"))  # full sentences


def test_key_material_never_appears_in_errors_reprs_warnings_or_logs(
    keys: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    reset_ephemeral_warning: None,
) -> None:
    pem_body = "".join(keys["private"].read_text().splitlines()[1:-1])
    rsa_body = "".join(keys["rsa"].read_text().splitlines()[1:-1])
    forbidden = [*SECRET_FORMS, SECRET.hex()[:20], SECRET[:15].hex(), pem_body[:40], rsa_body[:40]]
    texts: list[str] = []

    with caplog.at_level(logging.DEBUG):
        for _, call, _ in CONFIG_ERRORS:
            with pytest.raises(ConfigurationError) as info:
                call(keys)
            texts += [str(info.value), repr(info.value)]
            texts += traceback.format_exception(info.value)
            if info.value.__context__ is not None:  # suppressed, but still attached
                texts.append(repr(info.value.__context__))
        hmac_signer = load_signer(signing_key=SECRET, environ={})
        ed_signer = load_signer(signing_key_file=keys["private"], environ={})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_signer(environ={})
        texts += [str(w.message) for w in caught]
        for obj in (hmac_signer, ed_signer, hmac_signer.verifier(), ed_signer.verifier()):
            texts += [repr(obj), str(obj)]
    texts += [record.getMessage() for record in caplog.records]

    joined = "\n".join(texts)
    assert caught and caplog.records  # the warning and the log record were produced
    for secret in forbidden:
        assert secret not in joined
