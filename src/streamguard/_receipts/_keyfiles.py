"""Key material: parsing secrets and PEM files, writing key pairs. Never echoes a key.

Every error is a ``ConfigurationError`` that names the variable or argument (``name``), never
the key material, and is raised ``from None`` so no chained exception carries it along. A
*file* variable's value is shown only when it names an existing file: a value that names no
file may be a secret put in the wrong variable (an HMAC secret in
``STREAMGUARD_SIGNING_KEY_FILE``), so it is never echoed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from streamguard.exceptions import ConfigurationError

ENV_SIGNING_KEY = "STREAMGUARD_SIGNING_KEY"
ENV_SIGNING_KEY_FILE = "STREAMGUARD_SIGNING_KEY_FILE"
ENV_VERIFY_KEY_FILE = "STREAMGUARD_VERIFY_KEY_FILE"
ENV_KEY_ID = "STREAMGUARD_KEY_ID"
DEFAULT_KEY_ID = "default"
MIN_SECRET_BYTES = 16

KEYGEN_HINT = "create one with `streamguard keygen`"
SECRET_HINT = (
    "Set it to a random secret of at least 16 bytes written as hex or base64, e.g. the output of "
    '`python -c "import secrets; print(secrets.token_hex(32))"`.'
)


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key: safe to print and log."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_ed25519_keypair(
    private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]
) -> str:
    """Write a fresh Ed25519 key pair as PEM files and return the public key's fingerprint.

    The private key file is created with mode 0600. Existing files are never overwritten:
    ``FileExistsError`` is raised before anything is written.
    """
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise FileExistsError(
                f"{os.fspath(path)!r} already exists; refusing to overwrite a key"
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    return key_fingerprint(key.public_key())


def _write_new(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_KEY_ID = re.compile(r"[\x21-\x7e]{1,128}")


def check_key_id(key_id: object, name: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            f"{name} must be 1 to 128 printable ASCII characters without spaces, "
            "e.g. 'prod-2026-01'.",
            variable=name,
        )
    return key_id


def check_secret(secret: object, name: str) -> bytes:
    if not isinstance(secret, bytes | bytearray):
        raise ConfigurationError(f"{name} must be bytes.", variable=name)
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"{name} is too short: an HMAC secret needs at least {MIN_SECRET_BYTES} bytes. "
            + SECRET_HINT,
            variable=name,
        )
    return bytes(secret)


def decode_secret(value: str | bytes, name: str) -> bytes:
    if isinstance(value, bytes | bytearray):
        return check_secret(value, name)
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a str (hex or base64) or bytes.", variable=name)
    text = value.strip()
    if not text:
        raise ConfigurationError(f"{name} is empty. " + SECRET_HINT, variable=name)
    if _HEX.fullmatch(text):
        return check_secret(bytes.fromhex(text), name)
    # Accept standard and URL-safe alphabets, with or without padding.
    b64 = text.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        secret = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"{name} is neither hex nor base64. " + SECRET_HINT, variable=name
        ) from None
    return check_secret(secret, name)


def _looks_like_secret(value: str) -> bool:
    """Hex, base64 of at least 16 bytes, or PEM text: not a file name anyone would choose."""
    text = value.strip()
    if "-----BEGIN " in text:
        return True
    if len(text) < 22:  # 16 bytes are 22 base64 characters without padding
        return False
    b64 = text.replace("-", "+").replace("_", "/").rstrip("=")
    return bool(_HEX.fullmatch(text)) or bool(re.fullmatch(r"[A-Za-z0-9+/]+", b64))


def _read_pem(path: str, name: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if not os.path.lexists(path):
            # Not a file: the value may be key material put in the wrong place; never echo it.
            hint = (
                f" The value looks like key material itself: an HMAC secret goes in "
                f"{ENV_SIGNING_KEY}; this variable takes the path of a PEM file."
                if _looks_like_secret(path)
                else ""
            )
            raise ConfigurationError(
                f"{name} does not name an existing file (the value is not shown: it may be a "
                f"secret).{hint} Point it at {what} in PEM format ({KEYGEN_HINT}).",
                variable=name,
            ) from None
        raise ConfigurationError(
            f"{name} names {path!r}, which cannot be read ({reason}). "
            f"Point it at {what} in PEM format ({KEYGEN_HINT}).",
            variable=name,
        ) from None
    if b"-----BEGIN " not in data:
        raise ConfigurationError(
            f"{name} names {path!r}, which is not a PEM file. Point it at {what} in PEM format "
            f"({KEYGEN_HINT}).",
            variable=name,
        )
    return data


def load_private_key(path: str, name: str) -> Ed25519PrivateKey:
    what = "an Ed25519 private key"
    data = _read_pem(path, name, what)
    if b"PRIVATE KEY-----" not in data:
        raise ConfigurationError(
            f"{name} names {path!r}, which holds no private key (a public key goes in "
            f"{ENV_VERIFY_KEY_FILE}). Point it at {what} in PEM format ({KEYGEN_HINT}).",
            variable=name,
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            f"{name} names {path!r}, which is encrypted. StreamGuard needs an unencrypted "
            "key: protect the file with permissions instead (chmod 600).",
            variable=name,
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"{name} names {path!r}, which is not a readable PEM private key. Point it at "
            f"{what} ({KEYGEN_HINT}).",
            variable=name,
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(
            f"{name} names {path!r}, which holds a {_key_kind(key)} key; receipts are signed "
            f"with Ed25519 only. Point it at {what} ({KEYGEN_HINT}).",
            variable=name,
        )
    return key


def load_public_key(path: str, name: str) -> Ed25519PublicKey:
    what = "an Ed25519 public key"
    data = _read_pem(path, name, what)
    if b"PRIVATE KEY-----" in data:
        # Convenience for operators who only have the private key file at hand.
        return load_private_key(path, name).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"{name} names {path!r}, which is not a readable PEM public key. Point it at {what} "
            f"({KEYGEN_HINT}).",
            variable=name,
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(
            f"{name} names {path!r}, which holds a {_key_kind(key)} key; receipts are signed "
            f"with Ed25519 only. Point it at {what}.",
            variable=name,
        )
    return key


def _key_kind(key: object) -> str:
    # e.g. "_RSAPrivateKey" / "RSAPublicKey" -> "RSA"; names the type, never the material.
    name = type(key).__name__.lstrip("_")
    return re.sub(r"(Private|Public)Key$", "", name) or name
