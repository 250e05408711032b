"""Signing and verifying receipts: HMAC-SHA256 or Ed25519, keys from arguments or environment.

Guarantees
    - Key material never appears in ``repr``, ``str``, log records, warnings or error messages;
      errors about a key name the variable (or argument) and the file path, never the value,
      and are raised ``from None`` so no underlying exception can carry the value along.
    - ``Verifier.verify`` never raises on a bad, malformed or foreign signature: it returns
      ``False``. It accepts only the canonical (padded, standard) base64 encoding, so a
      signature value has exactly one valid spelling.
    - With no key configured, ``load_signer`` returns an ephemeral Ed25519 signer and warns once
      per process (``EphemeralKeyWarning`` and a log record on the ``streamguard`` logger).

The signature's ``alg`` and ``key_id`` are not inside the signed bytes (they say which key to
check with). A verifier created with a ``key_id`` accepts only that key id, which is how an
auditor pins a rotated key; with ``key_id=None`` any key id is accepted.

Configuration (DESIGN section 8; arguments win over the environment, empty variables count as
unset): ``STREAMGUARD_SIGNING_KEY`` (HMAC secret, hex or base64, at least 16 bytes),
``STREAMGUARD_SIGNING_KEY_FILE`` (Ed25519 private key, PEM), ``STREAMGUARD_VERIFY_KEY_FILE``
(Ed25519 public key, PEM), ``STREAMGUARD_KEY_ID`` (key id, default ``"default"``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import threading
import warnings
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from streamguard._receipts import _keyfiles as kf
from streamguard._receipts._hashing import HmacSha256
from streamguard._receipts._keyfiles import (
    DEFAULT_KEY_ID,
    ENV_KEY_ID,
    ENV_SIGNING_KEY,
    ENV_SIGNING_KEY_FILE,
    ENV_VERIFY_KEY_FILE,
    generate_ed25519_keypair,
    key_fingerprint,
)
from streamguard._receipts.model import Signature
from streamguard.exceptions import ConfigurationError, EphemeralKeyWarning

__all__ = [
    "DEFAULT_KEY_ID",
    "ENV_KEY_ID",
    "ENV_SIGNING_KEY",
    "ENV_SIGNING_KEY_FILE",
    "ENV_VERIFY_KEY_FILE",
    "Ed25519Signer",
    "Ed25519Verifier",
    "HmacSigner",
    "HmacVerifier",
    "Signer",
    "Verifier",
    "generate_ed25519_keypair",
    "key_fingerprint",
    "load_signer",
    "load_verifier",
]

_logger = logging.getLogger("streamguard")


@runtime_checkable
class Signer(Protocol):
    """Signs canonical receipt bytes. ``sign`` returns standard padded base64."""

    @property
    def alg(self) -> str: ...
    @property
    def key_id(self) -> str: ...
    def sign(self, data: bytes) -> str: ...


@runtime_checkable
class Verifier(Protocol):
    """Checks a signature; ``verify`` returns ``False`` (never raises) when it does not hold.

    ``key_id`` is ``None`` when any key id is accepted.
    """

    @property
    def alg(self) -> str: ...
    @property
    def key_id(self) -> str | None: ...
    def verify(self, data: bytes, signature: Signature) -> bool: ...


class HmacSigner:
    """HMAC-SHA256 signer (alg ``hmac-sha256``). The secret never appears in its repr."""

    __slots__ = ("_hmac", "_key_id", "_secret")
    alg = "hmac-sha256"

    def __init__(self, secret: bytes, key_id: str = DEFAULT_KEY_ID) -> None:
        self._secret = kf.check_secret(secret, "secret")
        self._key_id = kf.check_key_id(key_id, "key_id")
        self._hmac = HmacSha256(self._secret)

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, data: bytes) -> str:
        # Not hmac.digest: it releases the GIL on every call (see _hashing).
        return base64.b64encode(self._hmac.digest(data)).decode("ascii")

    def verifier(self) -> HmacVerifier:
        """A verifier for this signer's signatures (same secret, same key id)."""
        return HmacVerifier(self._secret, self._key_id)

    def __repr__(self) -> str:
        return f"HmacSigner(key_id={self._key_id!r})"


class Ed25519Signer:
    """Ed25519 signer (alg ``ed25519``); anyone with the public key can verify."""

    __slots__ = ("_key", "_key_id")
    alg = "ed25519"

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str = DEFAULT_KEY_ID) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        self._key = private_key
        self._key_id = kf.check_key_id(key_id, "key_id")

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._key.sign(data)).decode("ascii")

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_key_pem(self) -> str:
        """The public key as PEM (SubjectPublicKeyInfo), for ``STREAMGUARD_VERIFY_KEY_FILE``."""
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self._key.public_key(), self._key_id)

    def __repr__(self) -> str:
        return (
            f"Ed25519Signer(key_id={self._key_id!r}, public={key_fingerprint(self.public_key())})"
        )


class HmacVerifier:
    """Verifies ``hmac-sha256`` signatures; ``key_id=None`` accepts any key id."""

    __slots__ = ("_key_id", "_secret")
    alg = "hmac-sha256"

    def __init__(self, secret: bytes, key_id: str | None = None) -> None:
        self._secret = kf.check_secret(secret, "secret")
        self._key_id = None if key_id is None else kf.check_key_id(key_id, "key_id")

    @property
    def key_id(self) -> str | None:
        return self._key_id

    def verify(self, data: bytes, signature: Signature) -> bool:
        if not _applies(self, signature):
            return False
        mac = _decode_signature(signature.value)
        expected = hmac.digest(self._secret, data, "sha256")
        return mac is not None and hmac.compare_digest(mac, expected)

    def __repr__(self) -> str:
        return f"HmacVerifier(key_id={self._key_id!r})"


class Ed25519Verifier:
    """Verifies ``ed25519`` signatures with a public key; ``key_id=None`` accepts any key id."""

    __slots__ = ("_key", "_key_id")
    alg = "ed25519"

    def __init__(self, public_key: Ed25519PublicKey, key_id: str | None = None) -> None:
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError("public_key must be an Ed25519PublicKey")
        self._key = public_key
        self._key_id = None if key_id is None else kf.check_key_id(key_id, "key_id")

    @property
    def key_id(self) -> str | None:
        return self._key_id

    def verify(self, data: bytes, signature: Signature) -> bool:
        if not _applies(self, signature):
            return False
        raw = _decode_signature(signature.value)
        if raw is None:
            return False
        try:
            self._key.verify(raw, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def __repr__(self) -> str:
        return f"Ed25519Verifier(key_id={self._key_id!r}, public={key_fingerprint(self._key)})"


def _applies(verifier: HmacVerifier | Ed25519Verifier, signature: Signature) -> bool:
    if signature.alg != verifier.alg:
        return False
    return verifier.key_id is None or signature.key_id == verifier.key_id


def _decode_signature(value: str) -> bytes | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    # Reject non-canonical spellings (stray padding bits) so a value cannot be varied.
    return raw if base64.b64encode(raw).decode("ascii") == value else None


def load_signer(
    *,
    signing_key: str | bytes | None = None,
    signing_key_file: str | os.PathLike[str] | None = None,
    key_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> HmacSigner | Ed25519Signer:
    """The signer configured by arguments, else by the environment, else an ephemeral one.

    ``signing_key`` is an HMAC secret: ``bytes`` are used as they are, a ``str`` is decoded as
    hex (tried first) or base64. ``signing_key_file`` is an Ed25519 private key in PEM.
    Giving both (or setting both variables) raises ``ConfigurationError``, as does any bad key;
    the error names the argument or variable to fix. With nothing configured, the signer uses a
    fresh Ed25519 key with key id ``ephemeral-<8 hex>`` and a warning is issued once per process.

    >>> signer = load_signer(signing_key="00112233445566778899aabbccddeeff", key_id="k1")
    >>> signer.alg, signer.key_id
    ('hmac-sha256', 'k1')
    """
    env = os.environ if environ is None else environ
    kid = _resolve_key_id(key_id, env)
    if signing_key is not None or signing_key_file is not None:
        if signing_key is not None and signing_key_file is not None:
            raise ConfigurationError(
                "Both signing_key (HMAC) and signing_key_file (Ed25519) were given. "
                "Pass only one of them.",
                variable="signing_key",
            )
        if signing_key is not None:
            return HmacSigner(kf.decode_secret(signing_key, "signing_key"), kid or DEFAULT_KEY_ID)
        assert signing_key_file is not None
        key = kf.load_private_key(os.fspath(signing_key_file), "signing_key_file")
        return Ed25519Signer(key, kid or DEFAULT_KEY_ID)
    secret_env, file_env = env.get(ENV_SIGNING_KEY) or None, env.get(ENV_SIGNING_KEY_FILE) or None
    if secret_env is not None and file_env is not None:
        raise ConfigurationError(
            f"Both {ENV_SIGNING_KEY} (HMAC) and {ENV_SIGNING_KEY_FILE} (Ed25519) are set. "
            "Unset one of them so it is clear which key signs receipts.",
            variable=ENV_SIGNING_KEY,
        )
    if secret_env is not None:
        return HmacSigner(kf.decode_secret(secret_env, ENV_SIGNING_KEY), kid or DEFAULT_KEY_ID)
    if file_env is not None:
        return Ed25519Signer(
            kf.load_private_key(file_env, ENV_SIGNING_KEY_FILE), kid or DEFAULT_KEY_ID
        )
    return _ephemeral_signer()


def load_verifier(
    *,
    verify_key_file: str | os.PathLike[str] | None = None,
    hmac_key: str | bytes | None = None,
    key_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> HmacVerifier | Ed25519Verifier:
    """The verifier configured by arguments, else by the environment.

    ``verify_key_file`` is an Ed25519 public key in PEM (a private key PEM is accepted too; only
    its public half is used). ``hmac_key`` is the HMAC secret (as for ``load_signer``). From the
    environment: ``STREAMGUARD_VERIFY_KEY_FILE``, else ``STREAMGUARD_SIGNING_KEY``, else the
    public half of ``STREAMGUARD_SIGNING_KEY_FILE``. ``key_id`` (or ``STREAMGUARD_KEY_ID``)
    restricts the accepted key id; unset, any key id is accepted. Raises ``ConfigurationError``
    when nothing usable is configured.
    """
    return _load_verifier(
        verify_key_file, hmac_key, key_id, environ, names=("verify_key_file", "hmac_key", "key_id")
    )


def _load_verifier(
    verify_key_file: str | os.PathLike[str] | None,
    hmac_key: str | bytes | None,
    key_id: str | None,
    environ: Mapping[str, str] | None,
    *,
    names: tuple[str, str, str],
) -> HmacVerifier | Ed25519Verifier:
    # ``names`` lets the CLI report its own option names (--key, --hmac-key, --key-id).
    env = os.environ if environ is None else environ
    file_name, hmac_name, kid_name = names
    kid = kf.check_key_id(key_id, kid_name) if key_id is not None else _resolve_key_id(None, env)
    if verify_key_file is not None and hmac_key is not None:
        raise ConfigurationError(
            f"Both {file_name} (Ed25519) and {hmac_name} (HMAC) were given. Pass only one.",
            variable=file_name,
        )
    if verify_key_file is not None:
        return Ed25519Verifier(kf.load_public_key(os.fspath(verify_key_file), file_name), kid)
    if hmac_key is not None:
        return HmacVerifier(kf.decode_secret(hmac_key, hmac_name), kid)
    file_env, secret_env = env.get(ENV_VERIFY_KEY_FILE) or None, env.get(ENV_SIGNING_KEY) or None
    if file_env is not None and secret_env is not None:
        raise ConfigurationError(
            f"Both {ENV_VERIFY_KEY_FILE} (Ed25519) and {ENV_SIGNING_KEY} (HMAC) are set. "
            "Unset one, or pass the key to use explicitly.",
            variable=ENV_VERIFY_KEY_FILE,
        )
    if file_env is not None:
        return Ed25519Verifier(kf.load_public_key(file_env, ENV_VERIFY_KEY_FILE), kid)
    if secret_env is not None:
        return HmacVerifier(kf.decode_secret(secret_env, ENV_SIGNING_KEY), kid)
    private_env = env.get(ENV_SIGNING_KEY_FILE) or None
    if private_env is not None:
        return Ed25519Verifier(
            kf.load_private_key(private_env, ENV_SIGNING_KEY_FILE).public_key(), kid
        )
    raise ConfigurationError(
        f"No verification key is configured. Pass {file_name} (an Ed25519 public key PEM) or "
        f"{hmac_name} (the HMAC secret), or set {ENV_VERIFY_KEY_FILE} or {ENV_SIGNING_KEY}.",
        variable=ENV_VERIFY_KEY_FILE,
    )


# --- ephemeral key -------------------------------------------------------------------------

_warned = False
_warn_lock = threading.Lock()


def _ephemeral_signer() -> Ed25519Signer:
    key = Ed25519PrivateKey.generate()
    key_id = "ephemeral-" + key_fingerprint(key.public_key())[:8]
    global _warned
    with _warn_lock:
        first, _warned = not _warned, True
    if first:
        message = (
            f"No receipt signing key is configured, so receipts are signed with an ephemeral "
            f"Ed25519 key (key id {key_id}) that is lost when the process exits: nobody can "
            f"verify them later. Set {ENV_SIGNING_KEY_FILE} to an Ed25519 private key PEM "
            f"({kf.KEYGEN_HINT}) or {ENV_SIGNING_KEY} to an HMAC secret."
        )
        _logger.warning(message)
        # stacklevel 4 points at the code that called load_signer().
        warnings.warn(message, EphemeralKeyWarning, stacklevel=4)
    return Ed25519Signer(key, key_id)


def _resolve_key_id(key_id: str | None, env: Mapping[str, str]) -> str | None:
    if key_id is not None:
        return kf.check_key_id(key_id, "key_id")
    value = env.get(ENV_KEY_ID) or None
    return None if value is None else kf.check_key_id(value, ENV_KEY_ID)
