"""Sealing one chunk: keyed BLAKE3 content id → zstd → XChaCha20-Poly1305, and back.

Payload format, version 1 (what the store persists and replicas exchange; self-describing)::

    offset  size   field
    0       1      format version, 1
    1       1      flags: bit 0 ZSTD — the ciphertext decrypts to one zstd frame that declares
                   its content size; clear: it decrypts to the plaintext itself.
                   Bits 1..7 are reserved and must be 0.
    2       4      plain_size, unsigned big-endian, <= MAX_CHUNK_SIZE
    6       24     nonce, random per seal (XChaCha20's 192-bit nonce makes random nonces safe)
    30      n+16   XChaCha20-Poly1305-IETF ciphertext of the n-byte body, then its 16-byte tag

Associated data (authenticated, not stored)::

    b"hdsd-chunk\\0" || payload[0:6] || chunk_id (32) || u16 BE len(tenant) || tenant (UTF-8)

so a payload moved to another tenant or chunk id, or with its version, flags or size altered,
fails to decrypt. ``chunk_id`` is keyed BLAKE3-256 of the *plaintext* under the tenant's dedup
key; :meth:`ChunkCodec.open` recomputes it after decryption and decompression.

A chunk is stored compressed only if its zstd frame is strictly shorter than the plaintext, so
an uncompressed payload is exactly ``plain_size + PAYLOAD_OVERHEAD`` bytes and a compressed one
is shorter than that (a chunk of PROBE_MIN bytes or more is compressed only if a few 4 KiB
samples of it compress: already compressed content is not run through zstd whole for nothing;
either way the payload says which it is; a smaller chunk is not compressed while the tenant's
small chunks keep failing to shrink, but for one in SMALL_RETRY, see
``ChunkCodec._small_worth_compressing``). Decompression never produces more than the
authenticated plain_size.
Sealing the same plaintext twice gives the same id but different payloads (fresh nonce).
"""

from __future__ import annotations

import hmac
import struct
import threading
from dataclasses import dataclass
from typing import Any

import blake3
import nacl.bindings
import nacl.exceptions
import zstandard

from .._errors import IntegrityError
from ._aead import decrypt as _decrypt
from ._aead import encrypt as _encrypt
from ._chunker import MAX_CHUNK_SIZE
from ._keys import TenantKeys
from ._nonces import random_bytes

__all__ = [
    "CHUNK_ID_SIZE",
    "FLAG_ZSTD",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "PAYLOAD_OVERHEAD",
    "ChunkCodec",
    "ContentHasher",
    "SealedChunk",
]

FORMAT_VERSION = 1
FLAG_ZSTD = 0x01
_KNOWN_FLAGS = FLAG_ZSTD
CHUNK_ID_SIZE = 32
NONCE_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
_PREFIX = struct.Struct(">BBI")  # version, flags, plain_size
HEADER_SIZE = _PREFIX.size + NONCE_SIZE
PAYLOAD_OVERHEAD = HEADER_SIZE + TAG_SIZE
_AAD_DOMAIN = b"hdsd-chunk\0"

assert NONCE_SIZE == 24 and TAG_SIZE == 16 and HEADER_SIZE == 30 and PAYLOAD_OVERHEAD == 46
assert MAX_CHUNK_SIZE <= 0xFFFFFFFF


# zstandard (de)compressor objects are not thread-safe: one per thread (and per level), shared
# by every codec so that many tenants do not multiply the per-thread zstd contexts.
_tls = threading.local()


def _compressor(level: int) -> Any:
    by_level: dict[int, Any] | None = getattr(_tls, "compressors", None)
    if by_level is None:
        by_level = _tls.compressors = {}
    comp = by_level.get(level)
    if comp is None:
        comp = by_level[level] = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=False
        )
    return comp


def _decompressor() -> Any:
    dec = getattr(_tls, "decompressor", None)
    if dec is None:
        dec = _tls.decompressor = zstandard.ZstdDecompressor()
    return dec


@dataclass(frozen=True, slots=True)
class SealedChunk:
    """One sealed chunk: its content id, plaintext size and the payload the store persists."""

    chunk_id: bytes
    plain_size: int
    payload: bytes

    def __post_init__(self) -> None:
        if len(self.chunk_id) != CHUNK_ID_SIZE:
            raise ValueError(f"chunk_id must be {CHUNK_ID_SIZE} bytes")
        if self.plain_size < 0:
            raise ValueError("plain_size must be >= 0")


class ContentHasher:
    """Incremental keyed BLAKE3-256 over a whole blob (a version's ``content_hash``).

    Keyed with the tenant's dedup key, like chunk ids: a blob that fits in one chunk has a
    content hash equal to that chunk's id. ``digest()`` does not end the hasher.
    """

    __slots__ = ("_h",)

    def __init__(self, dedup_key: bytes) -> None:
        self._h = blake3.blake3(key=dedup_key)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        """The 32-byte hash of everything fed so far."""
        digest: bytes = self._h.digest()
        return digest


def _aad(tenant: bytes, prefix: bytes, chunk_id: bytes) -> bytes:
    return b"".join((_AAD_DOMAIN, prefix, chunk_id, len(tenant).to_bytes(2, "big"), tenant))


def _seal_body(
    keys: TenantKeys, chunk_id: bytes, flags: int, plain_size: int, body: bytes,
    aad_tail: bytes | None = None,
) -> bytes:
    """Encrypt an already prepared *body* into a payload. Private; tests use it to forge
    authenticated payloads whose inner frame lies. *aad_tail*: the AAD's end for *keys*'
    tenant (``ChunkCodec._aad_tail``: a small put's seal does not encode the name again)."""
    prefix = _PREFIX.pack(FORMAT_VERSION, flags, plain_size)
    nonce = random_bytes(NONCE_SIZE)
    aad = _aad(keys.tenant.encode("utf-8"), prefix, chunk_id) if aad_tail is None else \
        b"".join((_AAD_DOMAIN, prefix, chunk_id, aad_tail))
    return _encrypt(body, aad, nonce, keys.data_key, prefix + nonce)


class ChunkCodec:
    """Seals and opens the chunks of one tenant. Thread-safe: the CPU-heavy steps (hash,
    compress, encrypt) release the GIL, so callers run big chunks in worker threads.

    :meth:`open` raises :class:`~hdsd.IntegrityError` — and nothing else — for any payload that
    is not exactly what :meth:`seal` produced for that chunk id with this tenant's keys.
    """

    __slots__ = ("_aad_tail", "_small_misses", "compression_level", "keys")

    def __init__(self, keys: TenantKeys, *, compression_level: int = 1) -> None:
        if not -7 <= compression_level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise ValueError(
                f"compression_level must be in -7..{zstandard.MAX_COMPRESSION_LEVEL}"
            )
        self.keys = keys
        self.compression_level = compression_level
        tenant = keys.tenant.encode("utf-8")
        self._aad_tail = len(tenant).to_bytes(2, "big") + tenant  # the AAD's end, see _aad
        # Small chunks in a row that zstd did not shrink (see _small_worth_compressing).
        self._small_misses = 0

    def chunk_id(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Keyed BLAKE3-256 of *plaintext* under the tenant's dedup key (32 bytes)."""
        digest: bytes = blake3.blake3(plaintext, key=self.keys.dedup_key).digest()
        return digest

    def content_hasher(self) -> ContentHasher:
        """A fresh incremental hasher for a whole blob, keyed like chunk ids."""
        return ContentHasher(self.keys.dedup_key)

    def seal(self, plaintext: bytes | bytearray | memoryview) -> SealedChunk:
        """Hash, compress (if it shrinks) and encrypt one chunk of at most MAX_CHUNK_SIZE."""
        data = plaintext if isinstance(plaintext, bytes) else bytes(plaintext)
        size = len(data)
        if size > MAX_CHUNK_SIZE:
            raise ValueError(f"a chunk holds at most {MAX_CHUNK_SIZE} bytes, got {size}")
        chunk_id = self.chunk_id(data)
        body, flags = data, 0
        if size < PROBE_MIN:
            if size and self._small_worth_compressing():
                packed: bytes = _compressor(self.compression_level).compress(data)
                if len(packed) < size:
                    body, flags = packed, FLAG_ZSTD
                    self._small_misses = 0
                else:
                    self._small_misses += 1
        elif _worth_compressing(data, self.compression_level):
            packed = _compressor(self.compression_level).compress(data)
            if len(packed) < size:
                body, flags = packed, FLAG_ZSTD
        return SealedChunk(chunk_id, size, _seal_body(self.keys, chunk_id, flags, size, body,
                                                      self._aad_tail))

    def _small_worth_compressing(self) -> bool:
        """Whether to run zstd over a chunk under PROBE_MIN bytes (too small to sample, see
        :func:`_worth_compressing`): yes, unless the tenant's last SMALL_MISSES small chunks
        here all failed to shrink — then only every SMALL_RETRY-th is tried, and one that
        shrinks ends the skipping. zstd over an incompressible 4 KiB chunk (a client-side
        encrypted record, a JPEG thumbnail) is ~50 k instructions for nothing, the largest
        single item of a small put's seal; a tenant whose small chunks compress never skips,
        and one that mixes the two leaves the skipping at the first retry that shrinks. Racy
        across threads on purpose: a miscount changes a guess, and a wrong guess costs space,
        never correctness (the payload says whether it is compressed)."""
        misses = self._small_misses
        if misses < SMALL_MISSES or (misses - SMALL_MISSES) % SMALL_RETRY == SMALL_RETRY - 1:
            return True  # (seal counts it: a miss, or back to 0)
        self._small_misses = misses + 1
        return False

    def open(self, chunk_id: bytes, payload: bytes | bytearray | memoryview) -> bytes:
        """Decrypt, decompress and verify one payload; return the plaintext.

        Raises :class:`~hdsd.IntegrityError` on any failure: tampered or truncated payload,
        wrong tenant key, wrong chunk id, unknown format version or flags, a compressed body
        that lies about its size, or plaintext that does not hash back to *chunk_id*.
        """
        # The refusal's text (the id's hex, the tenant's repr) is made only for a payload that
        # fails: a small get opens one payload, and those few calls were a tenth of it.
        view = memoryview(payload).cast("B")
        total = len(view)
        if total < PAYLOAD_OVERHEAD or len(chunk_id) != CHUNK_ID_SIZE:
            raise IntegrityError(self._refusal(chunk_id, view))
        version, flags, plain_size = _PREFIX.unpack_from(view)
        body_size = total - PAYLOAD_OVERHEAD
        # Stored compressed only when that is strictly shorter (see the module docstring).
        compressed = flags == FLAG_ZSTD
        if not (version == FORMAT_VERSION and (compressed or not flags)
                and plain_size <= MAX_CHUNK_SIZE
                and (body_size < plain_size if compressed else body_size == plain_size)):
            raise IntegrityError(self._refusal(chunk_id, view))
        chunk_id = bytes(chunk_id)
        try:
            body: bytes = _decrypt(
                view[HEADER_SIZE:],
                b"".join((_AAD_DOMAIN, view[: _PREFIX.size], chunk_id, self._aad_tail)),
                bytes(view[_PREFIX.size : HEADER_SIZE]),
                self.keys.data_key,
            )
        except nacl.exceptions.CryptoError:
            raise IntegrityError(
                f"{self._where(chunk_id)}: authentication failed (tampered or damaged "
                "payload, wrong tenant key, or payload stored under the wrong chunk id)"
            ) from None
        plaintext = (_decompress(self._where(chunk_id), body, plain_size) if compressed
                     else body)
        if not hmac.compare_digest(self.chunk_id(plaintext), chunk_id):
            raise IntegrityError(
                f"{self._where(chunk_id)}: plaintext does not hash back to its chunk id")
        return plaintext

    def _where(self, chunk_id: bytes | bytearray | memoryview) -> str:
        return f"chunk {bytes(chunk_id[:8]).hex()} of tenant {self.keys.tenant!r}"

    def _refusal(self, chunk_id: bytes | bytearray | memoryview, view: memoryview) -> str:
        """Why :meth:`open` refuses a payload before decrypting it (the first check failed)."""
        where = self._where(chunk_id)
        if len(chunk_id) != CHUNK_ID_SIZE:
            return f"{where}: chunk id is {len(chunk_id)} bytes, not 32"
        if len(view) < PAYLOAD_OVERHEAD:
            return f"{where}: payload truncated ({len(view)} bytes)"
        version, flags, plain_size = _PREFIX.unpack_from(view)
        if version != FORMAT_VERSION:
            return f"{where}: unknown payload format version {version}"
        if flags & ~_KNOWN_FLAGS:
            return f"{where}: unknown payload flags {flags:#04x}"
        if plain_size > MAX_CHUNK_SIZE:
            return f"{where}: declared size {plain_size} exceeds the maximum"
        return f"{where}: payload length {len(view)} does not match declared size {plain_size}"


#: A chunk this large is first probed (see :func:`_worth_compressing`).
PROBE_MIN = 128 << 10
#: Small chunks in a row that did not shrink before a tenant's small chunks are compressed
#: only every SMALL_RETRY-th (see :meth:`ChunkCodec._small_worth_compressing`).
SMALL_MISSES = 8
SMALL_RETRY = 16
_PROBE = 4 << 10
_PROBES = 4
#: The probes must shrink at least this much (compressed / plain), else the chunk is stored
#: as it is: zstd's own output on incompressible bytes is a little *longer* than its input.
_PROBE_RATIO = 0.97


def _worth_compressing(data: bytes, level: int) -> bool:
    """Whether compressing *data* whole may pay: always for a small chunk; for a large one,
    only if a few samples spread over it (4 KiB at its start, end and two points between)
    compress at all. Already compressed content — the usual big blob: images, archives,
    video, and what a client encrypted itself — then costs ~16 KiB of zstd instead of the
    whole chunk (1 MiB: ~0.13 ms of CPU and a megabyte-sized output buffer, for nothing).
    A chunk stored uncompressed is always valid (the payload says so): a wrong guess costs
    space, never correctness."""
    size = len(data)
    if size < PROBE_MIN:
        return True
    comp = _compressor(level)
    step = (size - _PROBE) // (_PROBES - 1)
    with memoryview(data) as view:
        packed = sum(len(comp.compress(view[at:at + _PROBE]))
                     for at in range(0, step * _PROBES, step))
    return packed < _PROBE_RATIO * _PROBE * _PROBES


def _decompress(where: str, frame: bytes, plain_size: int) -> bytes:
    # The zstd frame header is checked before decompressing: python-zstandard sizes its output
    # buffer from the frame's declared content size and ignores max_output_size when one is
    # declared, so a lying frame must be refused up front (decompression-bomb guard).
    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size != plain_size or params.dict_id:
            raise IntegrityError(
                f"{where}: zstd frame declares {params.content_size} bytes"
                f"{' and a dictionary' if params.dict_id else ''}, payload {plain_size}"
            )
        out: bytes = _decompressor().decompress(
            frame, max_output_size=plain_size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{where}: corrupt zstd body: {exc}") from None
    if len(out) != plain_size:
        raise IntegrityError(f"{where}: decompressed to {len(out)} bytes, expected {plain_size}")
    return out
