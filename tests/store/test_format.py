"""The framing and scanning of the log, on bytes alone."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from hdsd import CorruptLogError, InvalidRequest
from hdsd._packing import packb
from hdsd.store import ChunkRecord
from hdsd.store import _format as F
from hdsd.store._log import Frame, ScanResult, classify_tail, frame_batch, parse_frame, scan_segment
from hdsd.store._records import decode_record, encode_record

from ._util import chunk_id, inline_version

BODIES = st.lists(st.binary(max_size=200), min_size=1, max_size=6)


def batch(payloads: list[bytes], start: int) -> tuple[bytes, list[int]]:
    return frame_batch([encode_record(ChunkRecord("t", chunk_id(p), p)) for p in payloads], start)


@given(batches=st.lists(BODIES, min_size=1, max_size=4))
def test_batches_round_trip(batches: list[list[bytes]]) -> None:
    log = bytearray(F.segment_header(1))
    for payloads in batches:
        data, _ = batch(payloads, len(log))
        log += data
    log += bytes(100)  # preallocated space: the normal end
    seen: list[list[Frame]] = []
    result = scan_segment(bytes(log), F.SEGMENT_HEADER_SIZE, len(log), seen.append)
    got = [[decode_record(f.kind, f.body).payload for f in b] for b in seen]  # type: ignore[union-attr]
    assert got == batches
    verdict = classify_tail(bytes(log), result, len(log), segment="s", last_segment=True)
    assert verdict.torn_end == verdict.committed_end == len(log) - 100


@given(data=st.binary(max_size=300), pos=st.integers(0, 300))
def test_parse_frame_never_raises_on_garbage(data: bytes, pos: int) -> None:
    frame = parse_frame(data, pos, len(data), None)
    assert frame is None or frame.end <= len(data)


@given(prefix=BODIES, garbage=st.binary(min_size=1, max_size=100))
def test_scanning_garbage_is_a_torn_tail_or_an_error(prefix: list[bytes],
                                                     garbage: bytes) -> None:
    data, _ = batch(prefix, 0)
    log = data + garbage
    result = scan_segment(log, 0, len(log), lambda frames: None)
    assert result.committed_end >= len(data)
    try:
        verdict = classify_tail(log, result, len(log), segment="s", last_segment=True)
    except CorruptLogError as exc:  # only if garbage precedes a valid later batch
        assert exc.segment == "s" and exc.offset >= len(data)
    else:
        assert verdict.committed_end >= len(data)


def test_damage_followed_by_a_later_batch_is_corruption() -> None:
    first, _ = batch([b"one", b"two"], 0)
    second, _ = batch([b"three"], len(first))
    log = bytearray(first + second)
    log[30] ^= 0xFF  # inside the first frame of the first batch
    result = scan_segment(bytes(log), 0, len(log), lambda frames: None)
    assert result == ScanResult(committed_end=0, stop=0, batches=0)
    with pytest.raises(CorruptLogError) as info:
        classify_tail(bytes(log), result, len(log), segment="seg", last_segment=True)
    assert (info.value.segment, info.value.offset) == ("seg", 0)


def test_damage_inside_the_last_batch_is_a_torn_tail() -> None:
    first, _ = batch([b"one"], 0)
    second, offsets = batch([b"two", b"three"], len(first))
    log = bytearray(first + second)
    log[offsets[0] + 30] ^= 0xFF  # the frame after it (same batch) is still valid
    result = scan_segment(bytes(log), 0, len(log), lambda frames: None)
    verdict = classify_tail(bytes(log), result, len(log), segment="seg", last_segment=True)
    assert (verdict.committed_end, verdict.torn_end) == (len(first), len(log))
    with pytest.raises(CorruptLogError):  # but not in a segment that has a successor
        classify_tail(bytes(log), result, len(log), segment="seg", last_segment=False)


def test_unencodable_records_are_refused_before_the_log() -> None:
    with pytest.raises(InvalidRequest):
        encode_record(inline_version("t", "b", "bad\ud800", 1, "n", b""))


def test_constants() -> None:
    assert F.parse_segment_name("0000000000000012.seg") == 12
    assert F.parse_segment_name("12.seg") is None
    assert F.parse_segment_name("0000000000000012.seg.tmp") is None
    header = F.segment_header(3)
    assert header.startswith(F.SEGMENT_MAGIC) and len(header) == F.SEGMENT_HEADER_SIZE


@given(size=st.sampled_from([0, 1, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, 1 << 20,
                             3 << 20]),
       tenant=st.text(min_size=1, max_size=70))
def test_a_chunk_record_is_packb_of_its_map_byte_for_byte(size: int, tenant: str) -> None:
    # A large chunk's payload is kept as the record's tail (written as it came): the frame must
    # still be the documented record ({t, c, p} as msgpack), whatever the size.
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    cid = chunk_id(payload)
    try:
        enc = encode_record(ChunkRecord(tenant, cid, payload))
    except InvalidRequest:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in tenant)  # a lone surrogate only
        return
    body = packb({"t": tenant, "c": cid, "p": payload})
    assert enc.body + enc.tail == body and enc.size == len(body)
    assert enc.body_digest == F.digest(body)
    assert enc.tail == (payload if size >= 64 << 10 else b"")
    framed, _ = frame_batch([enc], 32)
    frame = parse_frame(framed, 0, len(framed), 32)
    assert frame is not None and frame.body == body
    assert decode_record(F.KIND_CHUNK, frame.body) == ChunkRecord(tenant, cid, payload)
