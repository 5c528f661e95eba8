"""Framing: ``length | type | xxh3_64 | body`` (layout in ``_constants``), both directions.

:class:`FrameReader` is the receive buffer. It keeps an offset into one bytearray instead of
slicing consumed bytes off the front, so parsing is linear in the input however it is split,
and it compacts only when new data arrives after a frame was consumed. A header announcing a
body above the limit is refused as soon as its 13 bytes are in, before any body is buffered.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple

import xxhash

from .._errors import ProtocolError
from .._packing import packb
from . import _constants as C
from ._errors import LocalProtocolError

__all__ = [
    "BULK_BYTES",
    "FrameReader",
    "Piece",
    "SplitData",
    "encode_bulk_frame",
    "encode_bulk_frame_pieces",
    "encode_data_frame",
    "encode_data_frame_pieces",
    "encode_frame",
    "encode_upload_end",
]

_xxh3 = xxhash.xxh3_64_intdigest
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")


def encode_frame(code: int, body: bytes, max_frame: int) -> bytes:
    """The frame carrying *body*; :class:`LocalProtocolError` if it exceeds *max_frame*."""
    if len(body) > max_frame:
        raise LocalProtocolError(
            f"frame body of {len(body)} bytes exceeds the {max_frame}-byte frame limit"
        )
    return C.HEADER.pack(len(body), code, _xxh3(body)) + body


Piece = bytes | bytearray | memoryview
"""A part of a frame as the session writes it (see :func:`encode_data_frame_pieces`)."""


def encode_data_frame(code: int, rid: int, data: bytes | memoryview, max_frame: int) -> bytes:
    """The frame :func:`encode_frame` makes for ``Data(rid, data)`` — byte for byte the same
    (the msgpack array ``[rid, bin]``) — with the payload copied once, into the frame, instead
    of into the msgpack body, then the frame, then the session's outbox."""
    return b"".join(encode_data_frame_pieces(code, rid, data, max_frame))


def encode_data_frame_pieces(code: int, rid: int, data: bytes | memoryview,
                             max_frame: int) -> tuple[Piece, ...]:
    """:func:`encode_data_frame` as the pieces that make it up, in order — the header with
    the msgpack prefix, then *data* itself, not copied: the session writes them one after the
    other into TLS, so a megabyte get or put is not copied into a frame first."""
    return _data_head(code, _uint_head(rid), data, max_frame), data


def encode_upload_end(rid: int, data: bytes, max_frame: int) -> tuple[bytes, bytes]:
    """What ends an upload on *rid* sent whole, but *data* itself (not copied): the header and
    msgpack prefix of the frame of ``Data(rid, data)``, and the frame of ``End(rid)`` — byte
    for byte what :func:`encode_data_frame_pieces` and :func:`encode_frame` make, the rid's
    msgpack encoded once for both. No Data frame (``b""``) when *data* is empty, as a client
    sends an empty body. :class:`LocalProtocolError` if the Data frame exceeds *max_frame*."""
    head = _uint_head(rid)
    end = b"\x91" + head  # End's body: a fixarray of 1, the rid
    end_frame = C.HEADER.pack(len(end), C.T_END, _xxh3(end)) + end
    if not data:
        return b"", end_frame
    return _data_head(C.T_DATA, head, data, max_frame), end_frame


def _data_head(code: int, rid_head: bytes, data: bytes | memoryview, max_frame: int) -> bytes:
    """The frame header and msgpack prefix of a ``[rid, data]`` body (*rid_head*: the rid as
    msgpack encodes it), checked against *max_frame*; *data* itself follows them."""
    n = len(data)
    # msgpack: fixarray of 2, the rid (a uint32: check_rid), then the bin header.
    prefix = b"\x92" + rid_head + _bin_head(n)
    length = len(prefix) + n
    if length > max_frame:
        raise LocalProtocolError(
            f"frame body of {length} bytes exceeds the {max_frame}-byte frame limit")
    digest = xxhash.xxh3_64(prefix)
    digest.update(data)
    return C.HEADER.pack(length, code, digest.intdigest()) + prefix


def _uint_head(n: int) -> bytes:
    """msgpack's encoding of the uint32 *n* (a rid: ``check_rid``), as ``packb`` writes it."""
    if n < 0x80:
        return _U8.pack(n)
    if n < 0x100:
        return b"\xcc" + _U8.pack(n)
    if n < 0x10000:
        return b"\xcd" + _U16.pack(n)
    return b"\xce" + _U32.pack(n)


# Byte strings at least this large are copied into a bulk frame once (encode_bulk_frame).
BULK_BYTES = 64 << 10


def _bin_head(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + _U8.pack(n)
    if n < 0x10000:
        return b"\xc5" + _U16.pack(n)
    return b"\xc6" + _U32.pack(n)


def _array_head(n: int) -> bytes:
    if n < 16:
        return _U8.pack(0x90 | n)
    if n < 0x10000:
        return b"\xdc" + _U16.pack(n)
    return b"\xdd" + _U32.pack(n)


def _pack_parts(obj: object, parts: list[Piece]) -> None:
    """Append msgpack's encoding of *obj* to *parts*: lists and tuples entry by entry, byte
    strings of BULK_BYTES or more as their bin header and themselves (not copied), anything
    else as ``packb`` writes it."""
    if isinstance(obj, (bytes, bytearray, memoryview)) and len(obj) >= BULK_BYTES:
        parts.append(_bin_head(len(obj)))
        parts.append(obj)
    elif type(obj) is list or type(obj) is tuple:
        parts.append(_array_head(len(obj)))
        for item in obj:
            _pack_parts(item, parts)
    else:
        parts.append(packb(obj))


def encode_bulk_frame(code: int, values: list[object], max_frame: int) -> bytes:
    """The frame :func:`encode_frame` makes for the message body ``packb(values)`` — byte for
    byte the same — with its large byte strings (chunk payloads of a Replicate) copied once,
    into the frame."""
    return b"".join(encode_bulk_frame_pieces(code, values, max_frame))


def encode_bulk_frame_pieces(code: int, values: list[object],
                             max_frame: int) -> tuple[Piece, ...]:
    """:func:`encode_bulk_frame` as the pieces that make it up, in order: its large byte
    strings as themselves (not copied), the encoding between them joined. ``packb`` copies a
    megabyte payload into its buffer, grows it (another copy), copies it out into the body,
    and ``encode_frame`` copies the body behind the header: ~0.5 ms per MiB on the sending
    node's event loop, where the session now writes the pieces into TLS one after the other."""
    parts: list[Piece] = []
    _pack_parts(values, parts)
    length = sum(map(len, parts))
    if length > max_frame:
        raise LocalProtocolError(
            f"frame body of {length} bytes exceeds the {max_frame}-byte frame limit")
    digest = xxhash.xxh3_64()
    for part in parts:
        digest.update(part)
    pieces: list[Piece] = []
    small: list[Piece] = [C.HEADER.pack(length, code, digest.intdigest())]
    for part in parts:
        if len(part) >= BULK_BYTES:
            pieces.append(b"".join(small))
            pieces.append(part)
            small = []
        else:
            small.append(part)
    if small:
        pieces.append(b"".join(small))
    return tuple(pieces)


class SplitData(NamedTuple):
    """A large ``Data`` frame's fields, cut out of the pieces it arrived in (see
    :meth:`FrameReader.next_frame`): what ``unpackb`` of its body gives, ``[rid, data]``,
    with *data* copied once instead of twice."""

    rid: int
    data: bytes


def _rid_and_bin(buf: bytes | bytearray, at: int) -> tuple[int, int, int, int] | None:
    """A ``Data`` body's rid (a msgpack uint) at *at* in *buf*, then its payload's bin
    header: ``(rid, end of the rid, payload length, start of the payload)``, or None for any
    other encoding (left to the general decoder, which checks it and words the refusal).
    *buf* must hold the longest prefix past *at* (the callers see to it)."""
    b = buf[at]
    if b < 0x80:
        rid, at = b, at + 1
    elif b == 0xCC:
        rid, at = buf[at + 1], at + 2
    elif b == 0xCD:
        rid, at = _U16.unpack_from(buf, at + 1)[0], at + 3
    elif b == 0xCE:
        rid, at = _U32.unpack_from(buf, at + 1)[0], at + 5
    else:
        return None
    rid_end = at
    b = buf[at]
    if b == 0xC4:
        n, at = buf[at + 1], at + 2
    elif b == 0xC5:
        n, at = _U16.unpack_from(buf, at + 1)[0], at + 3
    elif b == 0xC6:
        n, at = _U32.unpack_from(buf, at + 1)[0], at + 5
    else:
        return None
    return rid, rid_end, n, at


def _split_data(pieces: list[bytes | bytearray | memoryview], length: int
                ) -> tuple[bytes, SplitData] | None:
    """A ``Data`` body ``[rid, bin]`` in *pieces* (*length* bytes in all) as its msgpack
    prefix and its fields, the payload joined once — or None for any body this does not
    recognise at a glance (then it is decoded the usual way, which checks it and words the
    refusal).

    The prefix may span pieces: a sender writes a frame's header and msgpack prefix into TLS
    as a piece of its own (``encode_data_frame_pieces``), so they arrive as a record of
    their own, the shortest prefix (7 bytes) alone in the first piece."""
    head = bytes(pieces[0][:_PREFIX_MAX])
    i = 1
    while len(head) < _PREFIX_MAX and i < len(pieces):
        head += pieces[i][:_PREFIX_MAX - len(head)]
        i += 1
    if len(head) < _PREFIX_MAX or head[0] != 0x92:  # fixarray of 2; room for the longest
        return None
    fields = _rid_and_bin(head, 1)
    if fields is None:
        return None
    rid, _, n, at = fields
    if at + n != length:
        return None
    # Skip the prefix (*at* bytes, in the first piece or more), then join the rest once.
    prefix, skip = head[:at], at
    for k, piece in enumerate(pieces):
        if skip < len(piece):
            with memoryview(piece) as view:
                return prefix, SplitData(rid, b"".join([view[skip:], *pieces[k + 1:]]))
        skip -= len(piece)
    return prefix, SplitData(rid, b"")


_PREFIX_MAX = 11
"""The longest ``[rid, bin]`` prefix: fixarray, a uint32 rid (5), a bin32 header (5)."""


# A frame whose body is at least this large and not yet all received is collected as the
# pieces it arrives in (TLS records of 16 KiB) and joined once when complete, instead of being
# appended to the buffer: growing a bytearray to a megabyte by 16 KiB appends reallocates it
# over and over (each a copy of what it holds), then the body was copied out of it again.
_BIG = 64 << 10


class FrameReader:
    """Accumulates received bytes and cuts them into ``(type code, body)`` frames.

    A large frame is collected as the pieces it arrives in (see ``_BIG``), from the piece
    that brings its header on: ``feed`` itself starts collecting as soon as the frame it
    appends to is the first unparsed one, large and incomplete — the session feeds every TLS
    record of a socket read (sixteen and more) before it asks for frames, and the records
    after a frame boundary were appended to the buffer (its growth reallocating it, each
    time a copy of what it holds) and then copied out again. A large frame completed by a
    feed waits, collected, in ``_done`` until :meth:`next_frame` returns it, so the next
    one can be collected behind it."""

    __slots__ = ("_big", "_big_code", "_big_end", "_big_have", "_big_sum", "_buf", "_done",
                 "_max_frame", "_pos")

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed byte in _buf
        self._max_frame = max_frame
        # A large frame being collected: its body's pieces so far, their total, the body's
        # length, and the header's type code and checksum (None: not collecting).
        self._big: list[bytes | bytearray | memoryview] | None = None
        self._big_have = 0
        self._big_end = 0
        self._big_code = 0
        self._big_sum = 0
        # Large frames complete but not returned yet, in order (all before _big and _buf):
        # (type code, checksum, body length, the body's pieces).
        self._done: deque[tuple[int, int, int, list[bytes | bytearray | memoryview]]] = \
            deque()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        big = 0 if self._big is None else C.HEADER_SIZE + self._big_have
        done = sum(C.HEADER_SIZE + end for _, _, end, _ in self._done)
        return len(self._buf) - self._pos + big + done

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        big = self._big
        if big is not None:
            need = self._big_end - self._big_have
            if len(data) < need:
                big.append(data)
                self._big_have += len(data)
                return
            # The large body ends in this piece: the rest, if any, starts the next frame.
            big.append(data if len(data) == need else memoryview(data)[:need])
            self._done.append((self._big_code, self._big_sum, self._big_end, big))
            self._big = None
            self._big_have = 0
            if len(data) == need:
                return
            data = memoryview(data)[need:]
        if self._pos:
            # Only bytes of the (single) incomplete frame remain: each byte is moved at most
            # once per frame boundary, so compaction stays linear overall.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        self._collect()

    def feed_pieces(self, pieces: list[bytes]) -> None:
        """:meth:`feed` each of *pieces* in order (a socket read's TLS records, 64 per MiB):
        the records inside a large frame being collected are taken here, without a call of
        ``feed`` each."""
        feed = self.feed
        for data in pieces:
            big = self._big
            if big is not None:
                n = len(data)
                if n < self._big_end - self._big_have:
                    big.append(data)
                    self._big_have += n
                    continue
            feed(data)

    def _collect(self) -> bool:
        """Start collecting the first unparsed frame as pieces if it is large and incomplete
        (its header read, its start moved out of the buffer); whether it did."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < C.HEADER_SIZE:
            return False
        length, code, checksum = C.HEADER.unpack_from(buf, pos)
        start = pos + C.HEADER_SIZE
        if length < _BIG or length > self._max_frame or len(buf) >= start + length:
            return False  # small, refused by next_frame, or already whole
        with memoryview(buf) as view:
            self._big = [bytes(view[start:])]
        self._big_have = len(buf) - start
        self._big_end, self._big_code, self._big_sum = length, code, checksum
        buf.clear()
        self._pos = 0
        return True

    def next_frame(self) -> tuple[int, bytes | SplitData] | None:
        """The next complete, checksum-verified frame, or None if more bytes are needed.

        A large ``Data`` frame (a body of a put or a get, a megabyte a frame) comes as its
        fields, :class:`SplitData`, its payload joined once from the pieces it arrived in:
        its body joined, then the payload copied out of it again by ``unpackb``, were two
        copies of every byte of a big put or get on the receiving side.

        Raises :class:`ProtocolError` for an oversized length or a checksum mismatch; the
        reader must not be used after that.
        """
        if self._done:
            code, checksum, end, big = self._done.popleft()
            if code == C.T_DATA:
                cut = _split_data(big, end)
                if cut is not None:
                    # Checked over the joined payload (two calls), not piece by piece (a
                    # call per TLS record, 64 per MiB).
                    prefix, split = cut
                    digest = xxhash.xxh3_64(prefix)
                    digest.update(split.data)
                    if digest.intdigest() != checksum:
                        raise ProtocolError(f"frame checksum mismatch (type 0x{code:02x}, "
                                            f"{end} bytes)")
                    return code, split
            body = b"".join(big)  # the one copy of a large body
            return self._checked(code, body, checksum)
        if self._big is not None:
            return None  # collecting: complete only once fed (then in _done)
        buf, pos = self._buf, self._pos
        if len(buf) - pos < C.HEADER_SIZE:
            return None
        length, code, checksum = C.HEADER.unpack_from(buf, pos)
        if length > self._max_frame:
            raise ProtocolError(
                f"frame announces a {length}-byte body, over the {self._max_frame}-byte limit"
            )
        start = pos + C.HEADER_SIZE
        end = start + length
        if len(buf) < end:
            self._collect()  # a large one: the rest piece by piece (see _BIG)
            return None
        with memoryview(buf) as view:  # one copy out of the buffer, and no export left behind
            body = bytes(view[start:end])
        self._pos = end
        if end == len(buf):
            # Everything consumed: reset for free instead of compacting later.
            buf.clear()
            self._pos = 0
        else:
            self._collect()  # the next frame, if large, collected from here on
        return self._checked(code, body, checksum)

    def next_upload_end(self, rid: int, credit: int) -> bytes | None:
        """The payload of the next two frames if they are, whole in the buffer, a ``Data``
        on *rid* of at most *credit* bytes and the ``End`` of *rid*, both intact — cut at
        once, the reader then past both. None for anything else, reading nothing: those
        frames are then read one by one by :meth:`next_frame`, which refuses what is wrong
        and words why (a small put's body and End arrive in one write with its start).

        Recognised as the client encodes them (``encode_upload_end``): the rid a msgpack
        uint, the same bytes in both, the payload a bin; any other valid encoding is left to
        :meth:`next_frame`, as is a frame still being collected."""
        if self._done or self._big is not None:
            return None
        buf, pos = self._buf, self._pos
        have = len(buf)
        if have - pos < 2 * C.HEADER_SIZE:
            return None
        length, code, checksum = C.HEADER.unpack_from(buf, pos)
        start = pos + C.HEADER_SIZE
        end = start + length
        if code != C.T_DATA or length > self._max_frame or end + C.HEADER_SIZE > have:
            return None
        # The Data body's prefix: fixarray of 2, the rid, a bin header. Read within the
        # buffer (the End's header is 13 bytes past any prefix that does not fit the body),
        # then held to the body by ``at + n == end``.
        if buf[start] != 0x92:
            return None
        fields = _rid_and_bin(buf, start + 1)
        if fields is None:
            return None
        got, rid_end, n, at = fields
        if got != rid or at + n != end or n > credit:
            return None
        # The End frame that follows: its body is [rid], the rid as the Data frame has it.
        length, code, end_sum = C.HEADER.unpack_from(buf, end)
        body = end + C.HEADER_SIZE
        stop = body + length
        if (code != C.T_END or stop > have or buf[body] != 0x91
                or buf[body + 1:stop] != buf[start + 1:rid_end]):
            return None
        with memoryview(buf) as view:
            if _xxh3(view[start:end]) != checksum or _xxh3(view[body:stop]) != end_sum:
                return None
            data = bytes(view[at:end])
        if stop == have:
            buf.clear()
            self._pos = 0
        else:
            self._pos = stop
            self._collect()  # the next frame, if large, collected from here on
        return data

    @staticmethod
    def _checked(code: int, body: bytes, checksum: int) -> tuple[int, bytes]:
        if _xxh3(body) != checksum:
            raise ProtocolError(f"frame checksum mismatch (type 0x{code:02x}, {len(body)} bytes)")
        return code, body
