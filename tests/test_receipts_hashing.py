"""The GIL-holding SHA-256 and HMAC-SHA256 give the standard library's digests at every size."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from streamguard._receipts._hashing import HmacSha256, sha256_hex
from streamguard._receipts.signing import HmacSigner

# Around the 2047-byte piece size, and several pieces.
_SIZES = [0, 1, 1000, 2046, 2047, 2048, 2049, 4094, 4095, 10_000]


@pytest.mark.parametrize("size", _SIZES)
def test_sha256_hex_is_hashlibs(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", _SIZES)
def test_hmac_is_the_standard_hmac_and_the_key_is_reused_safely(size: int) -> None:
    key = b"hashing-test-secret-0123456789ab"
    mac = HmacSha256(key)
    data = bytes(i % 253 for i in range(size))
    expected = hmac.digest(key, data, "sha256")
    assert mac.digest(data) == expected
    assert mac.digest(b"other") == hmac.digest(key, b"other", "sha256")
    assert mac.digest(data) == expected  # no state carried from one message to the next


def test_hmac_signer_signatures_are_unchanged_and_verify() -> None:
    secret = b"signer-test-secret-0123456789abc"
    signer = HmacSigner(secret, "k")
    data = b'{"a":"\xc3\xa9"}' * 300
    assert signer.sign(data) == base64.b64encode(hmac.digest(secret, data, "sha256")).decode()
    assert "signer-test-secret" not in repr(signer) and secret.hex() not in repr(signer)
