"""XChaCha20-Poly1305 (IETF) for the hot path: libsodium called through PyNaCl's own cffi
binding, without the checks its Python wrapper makes on every call.

``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt`` checks types and sizes with six
``ensure`` calls, three of them formatting their error message whether it fails or not: about
25 µs per call on the 2-core VM against ~5 µs for the cipher itself on a 100-byte message, and
a small put seals three times (the chunk, the version's names, the audit record's names). The
checks that keep libsodium within its buffers — key and nonce lengths — stay here; the types
are checked by cffi (bytes only). Without the private binding (another PyNaCl layout), the
public functions are used: same results, same errors.

Large messages (chunks: :data:`LARGE` bytes or more) take another route to the same bytes.
libsodium's XChaCha20-Poly1305 runs the *reference* (scalar) ChaCha20 — its SIMD code is only
reached by the IETF ChaCha20-Poly1305 construction — at about 1.6 ms per MiB on the 2-core VM,
the largest item of sealing a chunk. XChaCha20-Poly1305 is that construction under a subkey
(draft-irtf-cfrg-xchacha, as libsodium computes it): ``HChaCha20(key, nonce[:16])`` as the key,
``0^4 || nonce[16:]`` as the nonce. ``cryptography``'s ChaCha20-Poly1305 (OpenSSL, vectorised:
~0.3 ms per MiB, the GIL released) runs it; HChaCha20 is taken from one ChaCha20 block, whose
state is the HChaCha20 input (its 16-byte "nonce" is the counter and nonce words 12-15): the
block minus that state, words 0-3 and 12-15. ``tests/pipeline/test_aead.py`` holds both routes
to libsodium's bytes and errors. Small messages keep libsodium: below LARGE the cipher is not
what costs, and the subkey (one more cipher call) would.
"""

from __future__ import annotations

import struct

import nacl.bindings
from nacl.exceptions import CryptoError

__all__ = ["KEY_SIZE", "LARGE", "NONCE_SIZE", "TAG_SIZE", "decrypt", "encrypt"]

LARGE = 16 << 10

KEY_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES
NONCE_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES

try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib

    _seal = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt
    _open = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt
    # Output buffers are written whole by libsodium before they are read: not zeroed first
    # (``ffi.new`` clears them, a pass over every byte of a megabyte chunk for nothing).
    _raw = _ffi.new_allocator(should_clear_after_alloc=False)
except (ImportError, AttributeError):  # pragma: no cover - another PyNaCl layout
    _ffi = None

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    ChaCha20Poly1305(bytes(32))  # UnsupportedAlgorithm if its OpenSSL lacks the cipher
    _vectorised = True
except Exception:  # pragma: no cover - no usable ChaCha20-Poly1305 in cryptography
    _vectorised = False

_WORDS = struct.Struct("<16I")
_HWORDS = struct.Struct("<8I")
_KEY_WORDS = struct.Struct("<8I")
_INPUT_WORDS = struct.Struct("<4I")
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_ZERO_BLOCK = bytes(64)
_MASK = 0xFFFFFFFF


def _hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20(key, nonce16): the 20 rounds over the ChaCha20 state built from *key* and
    *nonce16*, words 0-3 and 12-15, without the final addition — i.e. one ChaCha20 block
    (which adds the state back) minus the state."""
    block = _WORDS.unpack(
        Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(_ZERO_BLOCK))
    state = (*_SIGMA, *_KEY_WORDS.unpack(key), *_INPUT_WORDS.unpack(nonce16))
    return _HWORDS.pack(*((block[i] - state[i]) & _MASK for i in (0, 1, 2, 3, 12, 13, 14, 15)))


def _ietf(nonce: bytes, key: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    """The ChaCha20-Poly1305 (IETF) cipher and nonce that XChaCha20-Poly1305 under *key* and
    the 24-byte *nonce* is."""
    return ChaCha20Poly1305(_hchacha20(key, nonce[:16])), b"\0\0\0\0" + nonce[16:]


def _check(nonce: bytes, key: bytes) -> None:
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise ValueError(f"XChaCha20-Poly1305 takes a {KEY_SIZE}-byte key and a "
                         f"{NONCE_SIZE}-byte nonce")


def encrypt(message: bytes, aad: bytes, nonce: bytes, key: bytes, header: bytes = b"") -> bytes:
    """*header*, then the ciphertext of *message* followed by its 16-byte tag, *aad*
    authenticated. The header (a payload's prefix and nonce) is written into the output
    buffer before the ciphertext, so a sealed chunk is not copied once more to prepend it."""
    if _ffi is None:  # pragma: no cover
        return header + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            message, aad, nonce, key)
    # _check's test, inline, and the message's length taken once: a small put seals three
    # times (its chunk, its version's names, its audit record's names), ~3 calls less each.
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        _check(nonce, key)  # raises
    size = len(message)
    if _vectorised and size >= LARGE:
        cipher, nonce12 = _ietf(nonce, key)
        body = cipher.encrypt(nonce12, message, aad)
        return header + body if header else body
    start = len(header)
    out = _raw("unsigned char[]", start + size + TAG_SIZE)
    if start:
        _ffi.memmove(out, header, start)
    _seal(out + start, _ffi.NULL, message, size, aad, len(aad), _ffi.NULL, nonce, key)
    sealed: bytes = _ffi.buffer(out)[:]
    return sealed


def decrypt(ciphertext: bytes | memoryview, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """The message of *ciphertext* (tag included); :class:`nacl.exceptions.CryptoError` if it
    does not authenticate under *key*, *nonce* and *aad*. A memoryview (a payload's body,
    past its header) is read in place, not copied first."""
    if _ffi is None:  # pragma: no cover
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(ciphertext), aad, nonce, key)
    _check(nonce, key)
    size = len(ciphertext) - TAG_SIZE
    if size < 0:
        raise CryptoError("Decryption failed.")
    if _vectorised and size >= LARGE:
        cipher, nonce12 = _ietf(nonce, key)
        try:
            opened: bytes = cipher.decrypt(nonce12, ciphertext, aad)
        except InvalidTag:
            raise CryptoError("Decryption failed.") from None
        return opened
    out = _raw("unsigned char[]", max(size, 1))
    if isinstance(ciphertext, bytes):
        failed = _open(out, _ffi.NULL, _ffi.NULL, ciphertext, len(ciphertext), aad, len(aad),
                       nonce, key)
    else:
        # Released on the way out, whatever happens: a buffer export left to the garbage
        # collector can outlive the memoryview it was taken from (a segfault, seen in tests).
        with _ffi.from_buffer(ciphertext) as source:
            failed = _open(out, _ffi.NULL, _ffi.NULL, source, len(ciphertext), aad, len(aad),
                           nonce, key)
    if failed != 0:
        raise CryptoError("Decryption failed.")
    message: bytes = _ffi.buffer(out, size)[:]
    return message
