"""The frame layout, byte for byte, and the reader's limits."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from hdsd import ProtocolError, wire
from hdsd._packing import unpackb
from hdsd.wire import Connection, Data, Role
from hdsd.wire import _constants as C
from hdsd.wire._connection import _data_of
from hdsd.wire._errors import LocalProtocolError
from hdsd.wire._frames import (
    BULK_BYTES,
    FrameReader,
    SplitData,
    encode_bulk_frame,
    encode_data_frame,
    encode_data_frame_pieces,
    encode_frame,
)
from hdsd.wire._registry import bulk_values, encode_body


def test_frame_layout_is_the_documented_one() -> None:
    # End(rid=7): body is the msgpack array [7] = 0x91 0x07.
    frame = encode_frame(C.T_END, b"\x91\x07", C.MAX_FRAME)
    checksum = xxhash.xxh3_64_intdigest(b"\x91\x07")
    assert frame == struct.pack(">I", 2) + bytes([0x21]) + struct.pack(">Q", checksum) + b"\x91\x07"
    assert len(frame) == wire.HEADER_SIZE + 2


def test_reader_cuts_frames_split_anywhere() -> None:
    frames = [encode_frame(C.T_END, bytes([0x91, i]), C.MAX_FRAME) for i in range(5)]
    stream = b"".join(frames)
    for cut in range(len(stream) + 1):
        reader = FrameReader(C.MAX_FRAME)
        got = []
        for piece in (stream[:cut], stream[cut:]):
            reader.feed(piece)
            while (frame := reader.next_frame()) is not None:
                got.append(frame)
        assert got == [(C.T_END, bytes([0x91, i])) for i in range(5)]
        assert reader.buffered == 0


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    reader = FrameReader(C.MIN_MAX_FRAME)
    reader.feed(C.HEADER.pack(C.MIN_MAX_FRAME + 1, C.T_DATA, 0))
    with pytest.raises(ProtocolError, match="limit"):
        reader.next_frame()


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    body = b"x" * C.MIN_MAX_FRAME
    reader = FrameReader(C.MIN_MAX_FRAME)
    reader.feed(encode_frame(C.T_DATA, body, C.MIN_MAX_FRAME))
    assert reader.next_frame() == (C.T_DATA, body)


def test_checksum_mismatch_is_a_protocol_error() -> None:
    frame = bytearray(encode_frame(C.T_END, b"\x91\x07", C.MAX_FRAME))
    frame[-1] ^= 0x01
    reader = FrameReader(C.MAX_FRAME)
    reader.feed(bytes(frame))
    with pytest.raises(ProtocolError, match="checksum"):
        reader.next_frame()


def test_encoder_refuses_frames_over_the_limit() -> None:
    with pytest.raises(wire.LocalProtocolError):
        encode_frame(C.T_DATA, b"x" * (C.MIN_MAX_FRAME + 1), C.MIN_MAX_FRAME)


def test_byte_by_byte_feeding_holds_one_incomplete_frame_at_most() -> None:
    body = b"y" * 1000
    stream = encode_frame(C.T_DATA, body, C.MAX_FRAME) * 3
    reader = FrameReader(C.MAX_FRAME)
    seen = 0
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        if reader.next_frame() is not None:
            seen += 1
        assert reader.buffered < C.HEADER_SIZE + len(body) + 1
    assert seen == 3


def test_the_example_in_docs_wire_md() -> None:
    conn = wire.Connection(wire.Role.SERVER)
    assert encode_frame(C.T_END, b"\x91\x07", C.MAX_FRAME).hex(" ") == (
        "00 00 00 02 21 d8 1c e9 13 9e d3 68 85 91 07"
    )
    assert conn.max_frame == 4_259_840  # the figure docs/wire.md gives for the default limit


_BOUNDARIES = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, C.MAX_RID)


@given(rid=st.one_of(st.sampled_from(_BOUNDARIES), st.integers(0, C.MAX_RID)),
       size=st.one_of(st.sampled_from((0, 1, 0xFF, 0x100, 0xFFFF, 0x10000)),
                      st.integers(0, 1 << 18)))
def test_a_data_frame_is_the_generic_encoding_byte_for_byte(rid: int, size: int) -> None:
    # The Data fast path writes the msgpack itself: it must be what packb writes, at every
    # boundary of msgpack's int and bin encodings.
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    code, body = encode_body(Data(rid=rid, data=data))
    assert encode_data_frame(C.T_DATA, rid, data, C.MAX_FRAME) == \
        encode_frame(code, body, C.MAX_FRAME)


@given(payloads=st.lists(st.sampled_from((0, 5, BULK_BYTES - 1, BULK_BYTES, 0xFFFF, 0x10000,
                                           0x10001)), min_size=1, max_size=17),
       versions=st.integers(0, 17), hint=st.booleans(), rid=st.sampled_from(_BOUNDARIES))
def test_a_bulk_frame_is_the_generic_encoding_byte_for_byte(
        payloads: list[int], versions: int, hint: bool, rid: int) -> None:
    # A Replicate with a large payload is framed without packb: it must still be exactly what
    # packb writes, at the boundaries of msgpack's array and bin headers (16 entries, 64 KiB).
    msg = wire.Replicate(
        rid=rid, layout="layout-1",
        chunks=[["tenant", bytes([i]) * 32, bytes([i % 251]) * n]
                for i, n in enumerate(payloads)],
        versions=[{"k": f"key{i}", "i": b"inline" * i, "n": i} for i in range(versions)],
        hint=hint)
    bulk = bulk_values(msg)
    assert (bulk is not None) == any(n >= BULK_BYTES for n in payloads)
    if bulk is not None:
        assert encode_bulk_frame(*bulk, C.MAX_FRAME) == \
            encode_frame(*encode_body(msg), C.MAX_FRAME)


def test_a_bulk_frame_over_the_limit_is_refused_before_sending() -> None:
    with pytest.raises(LocalProtocolError, match="limit"):
        encode_bulk_frame(0x40, [1, [["t", bytes(32), bytes(C.MIN_MAX_FRAME)]]],
                          C.MIN_MAX_FRAME)


def test_a_data_frame_over_the_limit_is_refused_before_sending() -> None:
    with pytest.raises(LocalProtocolError, match="limit"):
        encode_data_frame(C.T_DATA, 1, bytes(C.MIN_MAX_FRAME), C.MIN_MAX_FRAME)


def test_a_large_data_frame_round_trips_through_two_connections() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    hello = wire.Hello(protocol_version=C.PROTOCOL_VERSION, cluster_id="c", peer="p",
                       window=C.DEFAULT_WINDOW)
    server.receive_data(client.send(hello))
    client.receive_data(server.send(hello))
    assert isinstance(server.next_event(), wire.Hello)
    assert isinstance(client.next_event(), wire.Hello)
    payload = bytes(range(256)) * 4096  # 1 MiB
    server.receive_data(client.send(wire.PutStart(rid=3, request_id=b"r" * 16, bucket="b",
                                                  key="k", size=len(payload), metadata={},
                                                  policy=None)))
    assert isinstance(server.next_event(), wire.PutStart)
    server.receive_data(client.send(Data(rid=3, data=payload)))
    assert server.next_event() == Data(rid=3, data=payload)


def test_large_payloads_are_pieces_of_their_frame_not_copies() -> None:
    # The session writes a frame's pieces into TLS one after the other: a megabyte payload
    # (a Data body, a Replicate's chunk) must be one of them, the caller's own object.
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    hello = wire.Hello(protocol_version=C.PROTOCOL_VERSION, cluster_id="c", peer="p",
                       window=C.DEFAULT_WINDOW)
    server.receive_data(client.send(hello))
    client.receive_data(server.send(hello))
    assert isinstance(server.next_event(), wire.Hello)
    assert isinstance(client.next_event(), wire.Hello)
    payload = bytes(range(256)) * 4096  # 1 MiB
    server.receive_data(client.send(wire.PutStart(rid=3, request_id=b"r" * 16, bucket="b",
                                                  key="k", size=len(payload), metadata={},
                                                  policy=None)))
    assert isinstance(server.next_event(), wire.PutStart)
    pieces = client.send_pieces(Data(rid=3, data=payload))
    assert any(piece is payload for piece in pieces)
    server.receive_data(b"".join(pieces))
    assert server.next_event() == Data(rid=3, data=payload)
    replicate = wire.Replicate(rid=4, layout="l", chunks=[["t", b"i" * 32, payload]],
                               versions=[{"k": "v"}], hint=False)
    pieces = client.send_pieces(replicate)
    assert any(piece is payload for piece in pieces)
    server.receive_data(b"".join(pieces))
    assert server.next_event() == replicate


def _large_stream() -> tuple[bytes, list[tuple[int, bytes]]]:
    big = bytes(range(256)) * 1024  # 256 KiB: a body spanning many reads
    frames = [(C.T_END, b"\x91\x01"), (C.T_DATA, big), (C.T_END, b"\x91\x02"),
              (C.T_DATA, big[::-1]), (C.T_DATA, bytes(64 << 10))]
    return b"".join(encode_frame(code, body, C.MAX_FRAME) for code, body in frames), frames


@pytest.mark.parametrize("read", [1 << 20, 256 << 10, 65_536, 16_384, 4_099, 13])
def test_reader_cuts_large_frames_whatever_the_reads(read: int) -> None:
    stream, frames = _large_stream()
    reader = FrameReader(C.MAX_FRAME)
    got: list[tuple[int, bytes]] = []
    for at in range(0, len(stream), read):
        reader.feed(stream[at:at + read])
        while (frame := reader.next_frame()) is not None:
            assert isinstance(frame[1], bytes)  # not a Data body: cut as any frame
            got.append((frame[0], frame[1]))
        assert reader.buffered == min(len(stream), at + read) - sum(
            C.HEADER_SIZE + len(body) for _, body in got)
    assert got == frames
    assert reader.buffered == 0


@given(cuts=st.lists(st.integers(0, 600_000), max_size=6))
def test_reader_cuts_large_frames_split_anywhere(cuts: list[int]) -> None:
    stream, frames = _large_stream()
    got = _read_cut(stream, cuts)
    assert all(isinstance(body, bytes) for _, body in got)  # not Data bodies: cut as any frame
    assert [(code, body) for code, body in got] == frames


def _read_cut(stream: bytes, cuts: list[int]) -> list[tuple[int, Any]]:
    """The frames a reader gives when *stream* is fed to it cut at *cuts*."""
    bounds = [0, *sorted(c for c in cuts if c < len(stream)), len(stream)]
    reader = FrameReader(C.MAX_FRAME)
    got = []
    for lo, hi in itertools.pairwise(bounds):
        reader.feed(stream[lo:hi])
        while (frame := reader.next_frame()) is not None:
            got.append(frame)
    return got


@given(cuts=st.lists(st.integers(0, 600_000), max_size=12),
       batches=st.lists(st.integers(1, 5), min_size=1, max_size=20))
def test_pieces_fed_together_cut_as_fed_one_by_one(cuts: list[int], batches: list[int]) -> None:
    # A session hands a socket read's records over in one call (feed_pieces): the frames and
    # what stays buffered are those of feeding them one by one, large frames or small.
    stream, frames = _large_stream()
    stream += encode_frame(C.T_DATA, _data_body(b"\x03", bytes(range(256)) * 512), C.MAX_FRAME)
    bounds = [0, *sorted(c for c in cuts if c < len(stream)), len(stream)]
    pieces = [stream[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    one, many = FrameReader(C.MAX_FRAME), FrameReader(C.MAX_FRAME)
    got_one: list[Any] = []
    got_many: list[Any] = []
    at = 0
    for n in itertools.cycle(batches):
        batch = pieces[at:at + n]
        if not batch:
            break
        at += n
        for piece in batch:
            one.feed(piece)
        many.feed_pieces(batch)
        while (frame := one.next_frame()) is not None:
            got_one.append(frame)
        while (frame := many.next_frame()) is not None:
            got_many.append(frame)
        assert many.buffered == one.buffered
    assert got_many == got_one
    assert got_one[:len(frames)] == frames
    code, fields = got_one[-1]  # whole when its header was read: its body, as any frame
    assert code == C.T_DATA and (list(fields) if isinstance(fields, SplitData)
                                 else unpackb(fields)) == [3, bytes(range(256)) * 512]
    assert many.buffered == 0


def test_a_damaged_large_frame_fails_its_checksum() -> None:
    stream, _ = _large_stream()
    damaged = bytearray(stream)
    damaged[C.HEADER_SIZE + 2 + C.HEADER_SIZE + 100_000] ^= 1  # inside the first large body
    reader = FrameReader(C.MAX_FRAME)
    reader.feed(bytes(damaged[:70_000]))
    assert reader.next_frame() == (C.T_END, b"\x91\x01")
    assert reader.next_frame() is None
    reader.feed(bytes(damaged[70_000:]))
    with pytest.raises(ProtocolError, match="checksum"):
        reader.next_frame()


def _data_body(rid_head: bytes, payload: bytes, bin_head: bytes | None = None) -> bytes:
    n = len(payload)
    head = bin_head if bin_head is not None else (
        b"\xc5" + struct.pack(">H", n) if n < 0x10000 else b"\xc6" + struct.pack(">I", n))
    return b"\x92" + rid_head + head + payload


_RIDS = [(5, b"\x05"), (200, b"\xcc\xc8"), (60_000, b"\xcd\xea\x60"),
         (1 << 31, b"\xce\x80\x00\x00\x00")]


@given(rid=st.sampled_from(_RIDS), size=st.sampled_from([64 << 10, 300_001, 1 << 20]),
       cuts=st.lists(st.integers(0, (1 << 20) + 64), max_size=8))
def test_a_large_data_frame_is_cut_out_of_its_pieces(
        rid: tuple[int, bytes], size: int, cuts: list[int]) -> None:
    # The reader takes a large Data frame's payload out of the pieces it came in (one copy):
    # the same fields as unpackb of its body, whatever the reads.
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    body = _data_body(rid[1], payload)
    stream = encode_frame(C.T_DATA, body, C.MAX_FRAME) + encode_frame(C.T_END, b"\x91\x01",
                                                                      C.MAX_FRAME)
    got = _read_cut(stream, cuts)
    code, fields = got[0]
    assert code == C.T_DATA
    # A frame already whole when its header is read comes as its body, as any frame.
    assert (list(fields) if isinstance(fields, SplitData) else unpackb(fields)) == \
        unpackb(body) == [rid[0], payload]
    assert got[1] == (C.T_END, b"\x91\x01")


def test_a_megabyte_data_frame_read_in_records_is_cut_out_not_joined() -> None:
    payload = bytes(range(256)) * 4096
    frame = encode_frame(C.T_DATA, _data_body(b"\x09", payload), C.MAX_FRAME)
    reader = FrameReader(C.MAX_FRAME)
    got = []
    for at in range(0, len(frame), 16_384):  # TLS records, looked at as they come
        reader.feed(frame[at:at + 16_384])
        got.append(reader.next_frame())
    assert got[:-1] == [None] * (len(got) - 1)
    assert got[-1] == (C.T_DATA, SplitData(9, payload))
    assert reader.buffered == 0


@pytest.mark.parametrize("rid", [r for r, _ in _RIDS])
def test_a_data_frame_read_as_a_session_sends_it_is_cut_out_not_joined(rid: int) -> None:
    # A sender writes a Data frame's pieces into TLS one after the other (its header and
    # msgpack prefix, then the payload itself): the prefix arrives as a record of its own,
    # 7 bytes of it alone in the first piece after the header for a small rid. The payload
    # is still cut out of the records, not joined into a body and unpacked (two copies).
    payload = bytes(range(256)) * 4096
    pieces = encode_data_frame_pieces(C.T_DATA, rid, payload, C.MAX_FRAME)
    assert len(pieces) == 2 and len(pieces[0]) <= C.HEADER_SIZE + 11
    reader = FrameReader(C.MAX_FRAME)
    got = []
    for piece in pieces:
        for at in range(0, len(piece), 16_384):  # TLS records never straddle two pieces
            reader.feed(bytes(piece[at:at + 16_384]))
            while (frame := reader.next_frame()) is not None:
                got.append(frame)
    assert got == [(C.T_DATA, SplitData(rid, payload))]
    assert reader.buffered == 0


def test_a_large_data_frame_the_fast_path_does_not_know_is_decoded_as_always() -> None:
    payload = bytes(100_000)
    # A rid as a uint64 (legal msgpack, never what hdsd writes): the usual decoding.
    odd = b"\x92\xcf" + struct.pack(">Q", 7) + b"\xc6" + struct.pack(">I", len(payload)) + payload
    reader = FrameReader(C.MAX_FRAME)
    frame = encode_frame(C.T_DATA, odd, C.MAX_FRAME)
    reader.feed(frame[:1000])
    assert reader.next_frame() is None
    reader.feed(frame[1000:])
    assert reader.next_frame() == (C.T_DATA, odd)
    # A payload that is a str, not bin: refused by the connection as a malformed Data.
    hello = wire.Hello(protocol_version=C.PROTOCOL_VERSION, cluster_id="c", peer="p",
                       window=C.DEFAULT_WINDOW)
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(hello))
    client.receive_data(server.send(hello))
    assert isinstance(server.next_event(), wire.Hello)
    assert isinstance(client.next_event(), wire.Hello)
    server.receive_data(client.send(wire.PutStart(rid=3, request_id=b"r" * 16, bucket="b",
                                                  key="k", size=None, metadata={},
                                                  policy=None)))
    assert isinstance(server.next_event(), wire.PutStart)
    text = b"\x92\x03\xdb" + struct.pack(">I", 100_000) + b"a" * 100_000
    server.receive_data(encode_frame(C.T_DATA, text, C.MAX_FRAME))
    with pytest.raises(ProtocolError, match="Data"):
        server.next_event()


def test_a_damaged_large_data_frame_fails_its_checksum() -> None:
    frame = bytearray(encode_frame(C.T_DATA, _data_body(b"\x05", bytes(300_000)), C.MAX_FRAME))
    frame[200_000] ^= 1
    reader = FrameReader(C.MAX_FRAME)
    reader.feed(bytes(frame[:70_000]))
    assert reader.next_frame() is None
    reader.feed(bytes(frame[70_000:]))
    with pytest.raises(ProtocolError, match="checksum"):
        reader.next_frame()


def test_fields_cut_out_by_the_reader_are_still_checked() -> None:
    # The reader's quick look only yields rids a uint32 holds; the connection checks the
    # fields it builds the Data from all the same, as decode_body does.
    with pytest.raises(ProtocolError, match="malformed Data"):
        _data_of(SplitData(-1, b""))


def test_records_fed_before_frames_are_asked_for_are_collected_not_buffered() -> None:
    # The session feeds every TLS record of a socket read, then asks for frames: the records
    # of a large frame whose header came mid-read are kept as they are, not appended to the
    # buffer (reallocated as it grows) and copied out of it afterwards.
    payload = bytes(range(256)) * 4096
    one = encode_frame(C.T_DATA, _data_body(b"\x01", payload), C.MAX_FRAME)
    two = encode_frame(C.T_DATA, _data_body(b"\x02", payload[::-1]), C.MAX_FRAME)
    stream = b"".join([one, two, one, encode_frame(C.T_END, b"\x91\x07", C.MAX_FRAME)])
    reader = FrameReader(C.MAX_FRAME)
    got = []
    biggest = 0
    for read in range(0, len(stream), 256 << 10):  # socket reads ...
        for at in range(read, min(read + (256 << 10), len(stream)), 16_384):  # ... of records
            reader.feed(stream[at:at + 16_384])
            biggest = max(biggest, len(reader._buf))
        while (frame := reader.next_frame()) is not None:
            got.append(frame)
    assert got == [(C.T_DATA, SplitData(1, payload)), (C.T_DATA, SplitData(2, payload[::-1])),
                   (C.T_DATA, SplitData(1, payload)), (C.T_END, b"\x91\x07")]
    assert biggest <= 16_384
    assert reader.buffered == 0
