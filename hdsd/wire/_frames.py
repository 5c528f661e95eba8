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

__all__ = ["OWN_BUFFER", "FrameReader", "encode_data_frame", "encode_frame"]

OWN_BUFFER = 64 << 10
"""A frame body this large is received into a buffer of its own (see :class:`FrameReader`)."""

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
    """Accumulates received bytes and cuts them into ``(type code, body)`` frames.

    A frame of :data:`OWN_BUFFER` bytes or more (a body of a get or put, a chunk) is received
    into a buffer of its own, allocated once its header is in and handed out as the body
    (a ``bytearray``): its bytes are copied once, from the socket's reads into that buffer,
    instead of into the shared buffer and then out of it."""

    __slots__ = ("_big", "_big_code", "_big_fill", "_big_sum", "_buf", "_max_frame", "_pos")

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed byte in _buf
        self._max_frame = max_frame
        self._big: bytearray | None = None  # the body of a large frame being received
        self._big_fill = 0
        self._big_code = 0
        self._big_sum = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        big = 0 if self._big is None else C.HEADER_SIZE + self._big_fill
        return len(self._buf) - self._pos + big

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos:
            # Only bytes of the (single) incomplete frame remain: each byte is moved at most
            # once per frame boundary, so compaction stays linear overall.
            del self._buf[: self._pos]
            self._pos = 0
        big = self._big
        if big is None or self._big_fill == len(big):
            self._buf += data
            return
        with memoryview(data) as view:
            take = min(len(view), len(big) - self._big_fill)
            big[self._big_fill:self._big_fill + take] = view[:take]
            self._big_fill += take
            self._buf += view[take:]  # the next frames' first bytes (if the read had them)

    def next_frame(self) -> tuple[int, bytes | bytearray] | None:
        """The next complete, checksum-verified frame, or None if more bytes are needed.

        Raises :class:`ProtocolError` for an oversized length or a checksum mismatch; the
        reader must not be used after that.
        """
        big = self._big
        if big is not None:
            if self._big_fill < len(big):
                return None
            self._big = None
            if _xxh3(big) != self._big_sum:
                raise ProtocolError(f"frame checksum mismatch (type 0x{self._big_code:02x}, "
                                    f"{len(big)} bytes)")
            return self._big_code, big
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
            if length >= OWN_BUFFER:
                # Its own buffer from here on: what came of the body so far moves there once,
                # and the rest is received straight into it.
                body = bytearray(length)
                have = len(buf) - start
                with memoryview(buf) as view:
                    body[:have] = view[start:]
                buf.clear()
                self._pos = 0
                self._big, self._big_fill = body, have
                self._big_code, self._big_sum = code, checksum
            return None
        with memoryview(buf) as view:  # one copy out of the buffer, and no export left behind
            body_bytes = bytes(view[start:end])
        if _xxh3(body_bytes) != checksum:
            raise ProtocolError(f"frame checksum mismatch (type 0x{code:02x}, {length} bytes)")
        self._pos = end
        if end == len(buf):
            # Everything consumed: reset for free instead of compacting later.
            buf.clear()
            self._pos = 0
        return code, body_bytes
