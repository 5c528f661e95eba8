"""Framing: ``length | type | xxh3_64 | body`` (layout in ``_constants``), both directions.

:class:`FrameReader` is the receive buffer. It keeps an offset into one bytearray instead of
slicing consumed bytes off the front, so parsing is linear in the input however it is split,
and it compacts only when new data arrives after a frame was consumed. A header announcing a
body above the limit is refused as soon as its 13 bytes are in, before any body is buffered.
"""

from __future__ import annotations

import struct

import xxhash

from .._errors import ProtocolError
from . import _constants as C
from ._errors import LocalProtocolError

__all__ = ["FrameReader", "encode_data_frame", "encode_frame"]

_xxh3 = xxhash.xxh3_64_intdigest
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")


def encode_frame(code: int, body: bytes, max_frame: int) -> bytes:
    """The frame carrying *body*; :class:`LocalProtocolError` if it exceeds *max_frame*."""
    if len(body) > max_frame:
        raise LocalProtocolError(
            f"frame body of {len(body)} bytes exceeds the {max_frame}-byte frame limit"
        )
    return C.HEADER.pack(len(body), code, _xxh3(body)) + body


def encode_data_frame(code: int, rid: int, data: bytes | memoryview, max_frame: int) -> bytes:
    """The frame :func:`encode_frame` makes for ``Data(rid, data)`` — byte for byte the same
    (the msgpack array ``[rid, bin]``) — with the payload copied once, into the frame, instead
    of into the msgpack body, then the frame, then the session's outbox: a megabyte get or
    put moves through it."""
    n = len(data)
    # msgpack: fixarray of 2, the rid (a uint32: check_rid), then the bin header.
    if rid < 0x80:
        head = _U8.pack(rid)
    elif rid < 0x100:
        head = b"\xcc" + _U8.pack(rid)
    elif rid < 0x10000:
        head = b"\xcd" + _U16.pack(rid)
    else:
        head = b"\xce" + _U32.pack(rid)
    if n < 0x100:
        bin_head = b"\xc4" + _U8.pack(n)
    elif n < 0x10000:
        bin_head = b"\xc5" + _U16.pack(n)
    else:
        bin_head = b"\xc6" + _U32.pack(n)
    prefix = b"\x92" + head + bin_head
    length = len(prefix) + n
    if length > max_frame:
        raise LocalProtocolError(
            f"frame body of {length} bytes exceeds the {max_frame}-byte frame limit")
    digest = xxhash.xxh3_64(prefix)
    digest.update(data)
    return b"".join((C.HEADER.pack(length, code, digest.intdigest()), prefix, data))


class FrameReader:
    """Accumulates received bytes and cuts them into ``(type code, body)`` frames."""

    __slots__ = ("_buf", "_max_frame", "_pos")

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed byte in _buf
        self._max_frame = max_frame

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos:
            # Only bytes of the (single) incomplete frame remain: each byte is moved at most
            # once per frame boundary, so compaction stays linear overall.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete, checksum-verified frame, or None if more bytes are needed.

        Raises :class:`ProtocolError` for an oversized length or a checksum mismatch; the
        reader must not be used after that.
        """
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
            return None
        with memoryview(buf) as view:  # one copy out of the buffer, and no export left behind
            body = bytes(view[start:end])
        if _xxh3(body) != checksum:
            raise ProtocolError(f"frame checksum mismatch (type 0x{code:02x}, {length} bytes)")
        self._pos = end
        if end == len(buf):
            # Everything consumed: reset for free instead of compacting later.
            buf.clear()
            self._pos = 0
        return code, body
