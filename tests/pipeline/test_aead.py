"""The hot path's XChaCha20-Poly1305 calls give exactly PyNaCl's public results and errors."""

from __future__ import annotations

import os

import nacl.bindings
import pytest
from nacl.exceptions import CryptoError

from hdsd.pipeline._aead import LARGE, _hchacha20, decrypt, encrypt

_enc = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
_dec = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt


# Both routes: libsodium below LARGE, the IETF construction under an HChaCha20 subkey above.
_SIZES = [0, 1, 100, 4096, LARGE - 1, LARGE, LARGE + 1, LARGE + 64, 1 << 20, (4 << 20) + 3]


def test_hchacha20_gives_the_test_vector_of_the_xchacha_draft() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1.
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert _hchacha20(key, nonce) == bytes.fromhex(
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


@pytest.mark.parametrize("size", _SIZES)
@pytest.mark.parametrize("aad_size", [0, 60])
def test_same_results_as_the_public_binding(size: int, aad_size: int) -> None:
    key, nonce, message, aad = os.urandom(32), os.urandom(24), os.urandom(size), \
        os.urandom(aad_size)
    sealed = encrypt(message, aad, nonce, key)
    assert sealed == _enc(message, aad, nonce, key)
    assert decrypt(sealed, aad, nonce, key) == message == _dec(sealed, aad, nonce, key)


@pytest.mark.parametrize("message", [b"payload", os.urandom(LARGE + 100)])
def test_anything_altered_does_not_open(message: bytes) -> None:
    key, nonce, aad = os.urandom(32), os.urandom(24), b"where"
    sealed = encrypt(message, aad, nonce, key)
    for bad in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:15], b"", sealed + b"x",
                bytes([sealed[0] ^ 1]) + sealed[1:], sealed[:-17] + sealed[-16:]):
        with pytest.raises(CryptoError):
            decrypt(bad, aad, nonce, key)
    with pytest.raises(CryptoError):
        decrypt(sealed, b"elsewhere", nonce, key)
    with pytest.raises(CryptoError):
        decrypt(sealed, aad, os.urandom(24), key)
    with pytest.raises(CryptoError):
        decrypt(sealed, aad, nonce, os.urandom(32))


@pytest.mark.parametrize("size", [1, LARGE])
def test_wrong_key_or_nonce_sizes_are_refused_before_libsodium(size: int) -> None:
    # libsodium reads 32 and 24 bytes whatever it is given: shorter would read past the buffer.
    for key, nonce in ((os.urandom(31), os.urandom(24)), (os.urandom(32), os.urandom(23))):
        with pytest.raises(ValueError):
            encrypt(b"m" * size, b"", nonce, key)
        with pytest.raises(ValueError):
            decrypt(b"m" * (size + 32), b"", nonce, key)
    with pytest.raises(TypeError):
        encrypt("text", b"", os.urandom(24), os.urandom(32))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 100, LARGE, 1 << 20])
def test_header_and_memoryview_forms_give_the_same_bytes(size: int) -> None:
    key, nonce, message, aad = os.urandom(32), os.urandom(24), os.urandom(size), b"aad"
    header = b"H" * 30
    sealed = encrypt(message, aad, nonce, key, header)
    assert sealed == header + _enc(message, aad, nonce, key)
    view = memoryview(sealed)[len(header):]
    assert decrypt(view, aad, nonce, key) == message
    with pytest.raises(CryptoError):
        decrypt(memoryview(sealed)[len(header) + 1:], aad, nonce, key)
