"""XChaCha20-Poly1305 (IETF) for the hot path: libsodium called through PyNaCl's own cffi
binding, without the checks its Python wrapper makes on every call.

``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt`` checks types and sizes with six
``ensure`` calls, three of them formatting their error message whether it fails or not: about
25 µs per call on the 2-core VM against ~5 µs for the cipher itself on a 100-byte message, and
a small put seals three times (the chunk, the version's names, the audit record's names). The
checks that keep libsodium within its buffers — key and nonce lengths — stay here; the types
are checked by cffi (bytes only). Without the private binding (another PyNaCl layout), the
public functions are used: same results, same errors.
"""

from __future__ import annotations

import nacl.bindings
from nacl.exceptions import CryptoError

__all__ = ["KEY_SIZE", "NONCE_SIZE", "TAG_SIZE", "decrypt", "encrypt"]

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
    _check(nonce, key)
    start = len(header)
    out = _raw("unsigned char[]", start + len(message) + TAG_SIZE)
    if start:
        _ffi.memmove(out, header, start)
    _seal(out + start, _ffi.NULL, message, len(message), aad, len(aad), _ffi.NULL, nonce, key)
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
