from __future__ import annotations

import concurrent.futures
import os

import nacl.bindings
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from hdsd import IntegrityError
from hdsd.pipeline import (
    MAX_CHUNK_SIZE,
    PAYLOAD_OVERHEAD,
    ChunkCodec,
    SealedChunk,
    TenantKeys,
)
from hdsd.pipeline import _codec as codec_module
from hdsd.pipeline._codec import (
    FLAG_ZSTD,
    PROBE_MIN,
    SMALL_MISSES,
    SMALL_RETRY,
    _seal_body,
)

from ._data import codec_for, data_strategy, make_data

CODEC = codec_for()
SMALL = data_strategy(20_000)


@given(SMALL)
def test_round_trip_small(data: bytes) -> None:
    sealed = CODEC.seal(data)
    assert sealed.plain_size == len(data)
    assert sealed.chunk_id == CODEC.chunk_id(data)
    assert CODEC.open(sealed.chunk_id, sealed.payload) == data


@settings(max_examples=12)
@given(data_strategy(3 << 20))
def test_round_trip_up_to_several_mib(data: bytes) -> None:
    sealed = CODEC.seal(data)
    assert CODEC.open(sealed.chunk_id, bytearray(sealed.payload)) == data
    assert len(sealed.payload) <= len(data) + PAYLOAD_OVERHEAD


@pytest.mark.parametrize("kind", ["random", "repetitive", "image"])
@pytest.mark.parametrize("size", [(1 << 20) - 1, 1 << 20, (1 << 20) + 1, 5 << 20])
def test_round_trip_mib_sizes(kind: str, size: int) -> None:
    data = make_data(kind, size, size) if kind != "image" else make_data(kind, 1 << 20, 1) * 5
    data = data[:size]
    sealed = CODEC.seal(data)
    assert CODEC.open(sealed.chunk_id, memoryview(sealed.payload)) == data


def test_ids_are_stable_and_keyed_per_tenant() -> None:
    data = b"the same scan, pushed by two hospitals" * 100
    a1, a2 = codec_for("hospital-a"), codec_for("hospital-a")
    b = ChunkCodec(TenantKeys.generate("hospital-b"))
    assert a1.chunk_id(data) == a2.chunk_id(data) == a1.seal(data).chunk_id
    assert b.chunk_id(data) != a1.chunk_id(data)
    # Not a plain (unkeyed) hash either: a tenant cannot probe ids without the key.
    import blake3

    assert a1.chunk_id(data) != blake3.blake3(data).digest()


def test_same_plaintext_seals_to_different_payloads() -> None:
    one, two = CODEC.seal(b"x" * 1000), CODEC.seal(b"x" * 1000)
    assert one.chunk_id == two.chunk_id
    assert one.payload != two.payload  # fresh nonce each time


@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_content_hasher_is_incremental_keyed_blake3(pieces: list[bytes]) -> None:
    hasher = CODEC.content_hasher()
    for piece in pieces:
        hasher.update(piece)
    assert hasher.digest() == CODEC.chunk_id(b"".join(pieces))
    assert len(hasher.digest()) == 32


def test_incompressible_is_stored_raw_and_compressible_compressed() -> None:
    noise = os.urandom(1 << 20)
    raw = CODEC.seal(noise)
    assert raw.payload[1] & FLAG_ZSTD == 0
    assert len(raw.payload) == len(noise) + PAYLOAD_OVERHEAD
    image = make_data("image", 1 << 20, 7)
    packed = CODEC.seal(image)
    assert packed.payload[1] & FLAG_ZSTD
    assert len(packed.payload) < len(image) // 2
    assert CODEC.open(packed.chunk_id, packed.payload) == image
    empty = CODEC.seal(b"")
    assert empty.payload[1] & FLAG_ZSTD == 0 and len(empty.payload) == PAYLOAD_OVERHEAD


class _CountingCompressor:
    """A zstd compressor that records the size of everything it was asked to compress."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    def compress(self, data: bytes | memoryview) -> bytes:
        self.sizes.append(len(data))
        return self.inner.compress(data)  # type: ignore[attr-defined, no-any-return]


def test_a_large_incompressible_chunk_is_probed_not_compressed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _CountingCompressor(zstandard.ZstdCompressor(level=1, write_content_size=True))
    monkeypatch.setattr(codec_module, "_compressor", lambda level: counting)
    codec = codec_for()  # its own: no small chunks of other tests counted against it
    noise = os.urandom(1 << 20)
    sealed = codec.seal(noise)
    assert sealed.payload[1] & FLAG_ZSTD == 0
    assert sum(counting.sizes) <= 16 << 10  # the probes alone, not the megabyte
    assert codec.open(sealed.chunk_id, sealed.payload) == noise
    # Below the probing size, zstd is tried on the whole chunk as before.
    counting.sizes.clear()
    codec.seal(noise[: PROBE_MIN - 1])
    assert counting.sizes == [PROBE_MIN - 1]


def test_small_incompressible_chunks_in_a_row_are_then_compressed_one_in_retry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _CountingCompressor(zstandard.ZstdCompressor(level=1, write_content_size=True))
    monkeypatch.setattr(codec_module, "_compressor", lambda level: counting)
    codec = codec_for()
    chunks = [os.urandom(4096) for _ in range(SMALL_MISSES + 3 * SMALL_RETRY)]
    sealed = [codec.seal(c) for c in chunks]
    # Every chunk of the first run is tried; after it, one in SMALL_RETRY.
    assert len(counting.sizes) == SMALL_MISSES + 3
    for chunk, s in zip(chunks, sealed, strict=True):
        assert s.payload[1] & FLAG_ZSTD == 0
        assert len(s.payload) == len(chunk) + PAYLOAD_OVERHEAD
        assert codec.open(s.chunk_id, s.payload) == chunk
    # A large chunk is probed whatever the small ones did.
    image = make_data("image", PROBE_MIN, 3)
    assert codec.seal(image).payload[1] & FLAG_ZSTD


def test_a_small_chunk_that_shrinks_ends_the_skipping() -> None:
    codec = codec_for()
    for _ in range(SMALL_MISSES + 1):
        codec.seal(os.urandom(4096))  # now skipping
    text = [b"patient %d: blood pressure normal, " % i * 100 for i in range(2 * SMALL_RETRY)]
    flags = [codec.seal(t).payload[1] & FLAG_ZSTD for t in text]
    # Stored as they are until the next retry, compressed from it on.
    first = flags.index(FLAG_ZSTD)
    assert first < SMALL_RETRY
    assert all(flags[first:])
    assert not any(flags[:first])


def test_small_chunks_that_shrink_are_always_compressed() -> None:
    codec = codec_for()
    for i in range(SMALL_MISSES + 2 * SMALL_RETRY):
        assert codec.seal(b"record %d; " % i * 300).payload[1] & FLAG_ZSTD


@pytest.mark.parametrize("kind", ["repetitive", "image"])
@pytest.mark.parametrize("size", [PROBE_MIN, 300_001, 1 << 20])
def test_a_large_compressible_chunk_is_still_compressed(kind: str, size: int) -> None:
    data = make_data(kind, size, 11)
    sealed = CODEC.seal(data)
    assert sealed.payload[1] & FLAG_ZSTD
    assert CODEC.open(sealed.chunk_id, sealed.payload) == data


def test_a_chunk_random_at_its_start_and_compressible_after_is_compressed() -> None:
    # One probe of four lands in noise: the others see what compresses.
    data = os.urandom(64 << 10) + make_data("image", (1 << 20) - (64 << 10), 5)
    sealed = CODEC.seal(data)
    assert sealed.payload[1] & FLAG_ZSTD
    assert len(sealed.payload) < len(data) * 3 // 4
    assert CODEC.open(sealed.chunk_id, sealed.payload) == data


def test_compression_level_is_used_and_validated() -> None:
    data = make_data("image", 200_000, 3)
    fast, strong = codec_for(compression_level=1), codec_for(compression_level=19)
    assert len(strong.seal(data).payload) < len(fast.seal(data).payload)
    assert strong.open(*_id_payload(strong.seal(data))) == data
    with pytest.raises(ValueError):
        codec_for(compression_level=23)


def _id_payload(sealed: SealedChunk) -> tuple[bytes, bytes]:
    return sealed.chunk_id, sealed.payload


def test_seal_refuses_oversized_chunk() -> None:
    with pytest.raises(ValueError):
        CODEC.seal(bytes(MAX_CHUNK_SIZE + 1))


def test_codec_is_thread_safe() -> None:
    datas = [make_data(kind, 300_000, seed) for seed in range(4) for kind in ("random", "image")]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sealed = list(pool.map(CODEC.seal, datas))
        opened = list(pool.map(lambda s: CODEC.open(s.chunk_id, s.payload), sealed))
    assert opened == datas


def test_tenant_keys_validate_and_hide_secrets() -> None:
    keys = TenantKeys.generate("hospital-a")
    assert len(keys.data_key) == len(keys.dedup_key) == 32
    assert keys.data_key != TenantKeys.generate("hospital-a").data_key
    assert keys.data_key.hex() not in repr(keys) and keys.dedup_key.hex() not in repr(keys)
    assert repr(keys.data_key) not in repr(keys)
    with pytest.raises(ValueError):
        TenantKeys("", bytes(32), bytes(32))
    with pytest.raises(ValueError):
        TenantKeys("t", bytes(31), bytes(32))
    with pytest.raises(ValueError):
        TenantKeys("t", bytes(32), "k" * 32)  # type: ignore[arg-type]


# --- everything that is not exactly a sealed payload raises IntegrityError, and only that ---

SAMPLES = [CODEC.seal(make_data(kind, size, 1)) for kind in ("random", "image")
           for size in (0, 1, 1000, 70_000)]


@given(st.sampled_from(SAMPLES), st.data())
def test_any_flipped_bit_is_detected(sealed: SealedChunk, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(sealed.payload) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(sealed.payload)
    tampered[index] ^= mask
    with pytest.raises(IntegrityError):
        CODEC.open(sealed.chunk_id, bytes(tampered))


@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_or_extended_payload_is_detected(
    sealed: SealedChunk, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(sealed.payload) - 1))
    with pytest.raises(IntegrityError):
        CODEC.open(sealed.chunk_id, sealed.payload[:cut])
    with pytest.raises(IntegrityError):
        CODEC.open(sealed.chunk_id, sealed.payload + data.draw(st.binary(min_size=1, max_size=8)))


@pytest.mark.parametrize("sealed", SAMPLES)
def test_wrong_key_tenant_or_id_is_detected(sealed: SealedChunk) -> None:
    keys = CODEC.keys
    other_key = ChunkCodec(TenantKeys(keys.tenant, os.urandom(32), keys.dedup_key))
    other_tenant = ChunkCodec(TenantKeys("hospital-b", keys.data_key, keys.dedup_key))
    for codec in (other_key, other_tenant):
        with pytest.raises(IntegrityError, match="authentication failed"):
            codec.open(sealed.chunk_id, sealed.payload)
    other_id = CODEC.chunk_id(b"another chunk")
    with pytest.raises(IntegrityError, match="authentication failed"):
        CODEC.open(other_id, sealed.payload)
    with pytest.raises(IntegrityError):
        CODEC.open(sealed.chunk_id[:31], sealed.payload)


@pytest.mark.parametrize("sealed", SAMPLES)
def test_flag_and_version_changes_are_detected(sealed: SealedChunk) -> None:
    for index, mask in ((1, FLAG_ZSTD), (1, 0x80), (0, 0x01), (0, 0x03)):
        tampered = bytearray(sealed.payload)
        tampered[index] ^= mask
        with pytest.raises(IntegrityError):
            CODEC.open(sealed.chunk_id, bytes(tampered))
    future = bytes([2]) + sealed.payload[1:]
    with pytest.raises(IntegrityError, match="unknown payload format version 2"):
        CODEC.open(sealed.chunk_id, future)


@given(st.binary(max_size=400))
def test_garbage_payloads(garbage: bytes) -> None:
    with pytest.raises(IntegrityError):
        CODEC.open(SAMPLES[0].chunk_id, garbage)


@given(st.integers(0, 3), st.integers(0, 2**32 - 1), st.binary(min_size=40, max_size=400))
def test_garbage_behind_a_plausible_header(flags: int, size: int, rest: bytes) -> None:
    payload = bytes([1, flags]) + size.to_bytes(4, "big") + rest
    with pytest.raises(IntegrityError):
        CODEC.open(SAMPLES[0].chunk_id, payload)


# --- authenticated payloads whose inner zstd frame lies (only a key holder can make them) ---

def _forge(
    plain: bytes, frame: bytes, declared: int, chunk_id: bytes | None = None
) -> tuple[bytes, bytes]:
    cid = CODEC.chunk_id(plain) if chunk_id is None else chunk_id
    return cid, _seal_body(CODEC.keys, cid, FLAG_ZSTD, declared, frame)


def test_decompression_bomb_is_refused_before_allocating() -> None:
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(MAX_CHUNK_SIZE))
    cid, payload = _forge(b"", bomb, 100_000)
    with pytest.raises(IntegrityError, match="zstd frame declares"):
        CODEC.open(cid, payload)


def test_frame_without_content_size_is_refused() -> None:
    plain = bytes(100_000)
    frame = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(plain)
    cid, payload = _forge(plain, frame, len(plain))
    with pytest.raises(IntegrityError):
        CODEC.open(cid, payload)


def test_trailing_data_after_frame_is_refused() -> None:
    plain = bytes(100_000)
    frame = zstandard.ZstdCompressor(level=1).compress(plain)
    cid, payload = _forge(plain, frame + frame, len(plain))
    with pytest.raises(IntegrityError):
        CODEC.open(cid, payload)


def test_corrupt_frame_under_valid_tag_is_refused() -> None:
    plain = make_data("image", 100_000, 5)
    frame = bytearray(zstandard.ZstdCompressor(level=1).compress(plain))
    frame[len(frame) // 2] ^= 0xFF
    cid, payload = _forge(plain, bytes(frame), len(plain))
    with pytest.raises(IntegrityError):
        CODEC.open(cid, payload)


def test_plaintext_must_hash_back_to_its_id() -> None:
    plain = bytes(100_000)
    frame = zstandard.ZstdCompressor(level=1).compress(plain)
    cid, payload = _forge(plain, frame, len(plain), chunk_id=CODEC.chunk_id(b"other"))
    with pytest.raises(IntegrityError, match="does not hash back"):
        CODEC.open(cid, payload)


def test_declared_size_above_maximum_is_refused() -> None:
    cid = CODEC.chunk_id(b"")
    payload = _seal_body(CODEC.keys, cid, 0, MAX_CHUNK_SIZE + 1, b"")
    payload += bytes(MAX_CHUNK_SIZE + 1)  # length would otherwise be consistent
    with pytest.raises(IntegrityError, match="exceeds the maximum"):
        CODEC.open(cid, payload)


def test_payload_layout_matches_the_documented_format() -> None:
    data = make_data("random", 5000, 9)
    sealed = CODEC.seal(data)
    p = sealed.payload
    assert p[0] == 1 and p[1] == 0 and int.from_bytes(p[2:6], "big") == 5000
    nonce, body = p[6:30], p[30:]
    aad = (b"hdsd-chunk\0" + p[:6] + sealed.chunk_id + len(b"hospital-a").to_bytes(2, "big")
           + b"hospital-a")
    plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        body, aad, nonce, CODEC.keys.data_key
    )
    assert plain == data
