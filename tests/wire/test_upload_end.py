"""``Connection.next_upload_end``: an upload's Data and End read in one pass are the events, the
refusals and the state of :meth:`~hdsd.wire.Connection.next_event` reading them one by one.

The differential test feeds the same byte streams — valid and hostile, whole, in pieces or one
byte at a time — to two servers: one reads every frame with ``next_event``, the other, after
each upload's start, first tries ``next_upload_end`` (as ``WireSession._open_upload`` does).
Their events, errors (type and words) and state must be the same after every piece."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd import ProtocolError, wire
from hdsd._packing import packb
from hdsd.wire import _constants as C
from hdsd.wire._connection import ServerHalf
from hdsd.wire._frames import encode_frame
from hdsd.wire._registry import encode_body
from hdsd.wire.testing import ConnectionPair

MAX = C.MIN_MAX_FRAME  # the smallest frame limit, so its edge is cheap to reach
REQ_ID = bytes(16)
# rids at each edge of msgpack's uint encodings, few enough to collide.
RIDS = [1, 0x7F, 0x80, 0x100, 0x10000, C.MAX_RID]


def start(rid: int) -> wire.PutStart:
    return wire.PutStart(rid, REQ_ID, "bucket", "some/key", None, {}, None)


def frame(code: int, body: bytes, checksum: int | None = None) -> bytes:
    """A frame of *body* (any bytes); *checksum* overrides the right one."""
    good = encode_frame(code, body, 1 << 32)
    if checksum is None:
        return good
    return C.HEADER.pack(len(body), code, checksum) + body


def msg_frame(msg: wire.Message) -> bytes:
    return encode_frame(*encode_body(msg), 1 << 32)


_UINTS = {"fix": ">B", "u8": ">BB", "u16": ">BH", "u32": ">BI"}


def uint(n: int, how: str) -> bytes:
    """*n* as msgpack encodes it in the form *how* (``fix``: the shortest), or the shortest
    form if *n* does not fit the one asked for."""
    if how == "u8" and n < 0x100:
        return struct.pack(">BB", 0xCC, n)
    if how == "u16" and n < 0x10000:
        return struct.pack(">BH", 0xCD, n)
    if how == "u32":
        return struct.pack(">BI", 0xCE, n)
    return packb(n)


@dataclass(frozen=True)
class Trace:
    """What a server read from a stream: per piece fed, its events then its state."""

    steps: list[tuple[list[Any], tuple[Any, ...]]]


def state(conn: wire.Connection) -> tuple[Any, ...]:
    reader = conn._reader
    return (
        {r: (v.kind, v.client, v.server, v.credit) for r, v in conn._rids.items()},
        conn.buffered, conn.requests_in_flight, conn._their_goodbye,
        None if conn._error is None else (type(conn._error), str(conn._error)),
        bytes(reader._buf[reader._pos:]), reader._pos, reader._big, list(reader._done),
    )


def read(conn: wire.Connection, pieces: list[bytes], *, one_pass: bool,
         answer: str) -> tuple[Trace, int]:
    """Feed *pieces* then EOF to *conn*, reading as the session does: after an upload's start
    the one-pass read first, if *one_pass*. The server answers each upload when its End comes
    (*answer* ``end``: a Reply, the rid then free), at once (``early``: an ErrorReply, the rest
    of the body then drained) or ``never`` (its records stay, credit and all, to compare).
    Returns the trace and how many times the one pass applied."""
    steps: list[tuple[list[Any], tuple[Any, ...]]] = []
    applied = 0
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        events: list[Any] = []
        try:
            while True:
                event = conn.next_event()
                events.append(event)
                if isinstance(event, (wire.NeedData, wire.ConnectionClosed)):
                    break
                if isinstance(event, wire.PutStart):
                    if answer == "early":
                        conn.send(wire.ErrorReply(event.rid, "not_found", "no such bucket"))
                    if one_pass:
                        whole = conn.next_upload_end(event.rid)
                        if whole is not None:
                            applied += 1
                            events.extend(whole)
                            event = whole[1]
                if isinstance(event, wire.End) and answer == "end":
                    rec = conn._rids.get(event.rid)
                    if rec is not None and rec.server is not ServerHalf.DONE:
                        conn.send(wire.Reply(event.rid, {"ok": True}))
        except ProtocolError as exc:
            events.append((type(exc), str(exc)))
            steps.append((events, state(conn)))
            return Trace(steps), applied
        steps.append((events, state(conn)))
    return Trace(steps), applied


def compare(stream: bytes, pieces: list[bytes] | None = None, *,
            window: int = C.DEFAULT_WINDOW, answer: str = "end") -> int:
    """Assert both readers read *stream* cut into *pieces* (default: whole) alike; how often
    the one pass applied."""
    pieces = [stream] if pieces is None else pieces
    assert b"".join(pieces) == stream
    old = ConnectionPair(server_window=window, max_frame=MAX).server
    new = ConnectionPair(server_window=window, max_frame=MAX).server
    theirs, _ = read(old, pieces, one_pass=False, answer=answer)
    ours, applied = read(new, pieces, one_pass=True, answer=answer)
    assert ours == theirs
    return applied


def upload(rid: int, data: bytes) -> bytes:
    """A small put as the client sends it (``send_upload``)."""
    client = ConnectionPair().client
    return b"".join(client.send_upload(start(rid), data))


# -- the valid case: it applies, and reads what next_event reads -----------------------------

@pytest.mark.parametrize("rid", RIDS)
@pytest.mark.parametrize("size", [1, 0xFF, 0x100, 4096, 0xFFFF - 20])
def test_a_small_put_is_read_in_one_pass(rid: int, size: int) -> None:
    stream = upload(rid, bytes(i % 251 for i in range(size)))
    assert compare(stream, [stream]) == 1
    # Two puts in one read (the rid used again once answered), and a put followed by a
    # frame of another request.
    assert compare(stream * 2, [stream * 2]) == 2
    other = rid + 1 if rid < C.MAX_RID else 1
    after = stream + msg_frame(wire.StatRequest(other, "b", "k", None))
    assert compare(after, [after]) == 1


@pytest.mark.parametrize("rid", RIDS)
def test_an_empty_body(rid: int) -> None:
    """A client sends no Data frame for an empty body: End alone is left to next_event. An
    empty Data frame before it is read in one pass."""
    assert compare(upload(rid, b""), [upload(rid, b"")]) == 0
    stream = msg_frame(start(rid)) + msg_frame(wire.Data(rid, b"")) + msg_frame(wire.End(rid))
    assert compare(stream, [stream]) == 1


def test_it_does_not_apply_until_both_frames_are_whole() -> None:
    stream = upload(5, b"x" * 100)
    for cut in range(len(stream) + 1):
        applied = compare(stream, [p for p in (stream[:cut], stream[cut:]) if p])
        # Once the PutStart is read with the whole body and End behind it: in one pass.
        assert applied == (cut == len(stream) or cut < len(msg_frame(start(5))))
    assert compare(stream, [stream[i:i + 1] for i in range(len(stream))]) == 0


@pytest.mark.parametrize("over", [-1, 0, 1])
def test_at_the_credit(over: int) -> None:
    """A body of the credit less one, the credit, and one byte over it: the last refused in
    next_event's words (the one pass does not apply)."""
    window = 4096
    stream = upload(3, bytes(window + over))
    applied = compare(stream, [stream], window=window)
    assert applied == (over <= 0)


@pytest.mark.parametrize("rid", [1, 0x80, 0x10000])
@pytest.mark.parametrize("over", [-1, 0, 1])
def test_at_the_data_frame_limit(rid: int, over: int) -> None:
    """The largest Data frame ``max_frame`` allows, one byte less, and one byte more (refused
    from its header), whole in the buffer."""
    prefix = 1 + len(packb(rid)) + 3  # fixarray, the rid, a bin16 header
    data = bytes(MAX - prefix + over)
    body = b"\x92" + packb(rid) + b"\xc5" + struct.pack(">H", len(data)) + data
    stream = msg_frame(start(rid)) + frame(C.T_DATA, body) + msg_frame(wire.End(rid))
    assert compare(stream, [stream]) == (over <= 0)


def test_a_stream_it_recognises_is_read_whole() -> None:
    """Not a test that can only pass by comparing: the one pass does apply to a client's
    small put, and leaves the reader past it; it does not apply to an upload whose End was
    read, nor on a client."""
    conn = ConnectionPair().server
    conn.receive_data(upload(9, b"abc") + msg_frame(wire.Data(9, b"d")) + msg_frame(wire.End(9)))
    assert conn.next_event() == start(9)
    assert conn.next_upload_end(9) == (wire.Data(9, b"abc"), wire.End(9))
    assert conn.next_upload_end(9) is None  # no longer uploading
    with pytest.raises(ProtocolError, match=r"Data not allowed on rid 9 \(upload request"):
        conn.next_event()
    pair = ConnectionPair()
    pair.client.send(start(9))  # its body still to send: uploading
    pair.client.receive_data(msg_frame(wire.Data(9, b"d")) + msg_frame(wire.End(9)))
    assert pair.client.next_upload_end(9) is None
    with pytest.raises(ProtocolError, match="Data not allowed on rid 9"):
        pair.client.next_event()


def test_a_large_frame_behind_the_end_is_collected_alike() -> None:
    """After the End, a large frame not yet whole is collected as its pieces come (the
    reader's ``_collect``), as next_event leaves it."""
    big = frame(0xF0, bytes(MAX))  # refused once whole: an unknown type
    stream = upload(4, b"abc") + big
    cut = len(upload(4, b"abc")) + 1000
    assert compare(stream, [stream[:cut], stream[cut:]], answer="never") == 1


@pytest.mark.parametrize("behind", [b"", b"\x00" * 5, msg_frame(wire.Cancel(2)),
                                    frame(0xF0, bytes(MAX))[:1000]])
def test_the_state_right_after_is_that_of_two_next_events(behind: bytes) -> None:
    """Not only once drained to NeedData: right after, the reader and the records are those
    two next_event calls leave (a large frame behind already being collected)."""
    stream = upload(2, b"xyz") + behind
    old, new = ConnectionPair().server, ConnectionPair().server
    for conn in (old, new):
        conn.receive_data(stream)
        assert conn.next_event() == start(2)
    assert new.next_upload_end(2) == (old.next_event(), old.next_event())
    assert state(new) == state(old)


# -- hostile streams, each change of a small put's Data and End --------------------------------

def _data_body(rid: bytes, data: bytes) -> bytes:
    return b"\x92" + rid + packb(data)


def _changed(body: bytes) -> list[bytes]:
    """*body* with one byte changed (each of its first 16 and its last, three ways), a byte
    less, a byte more."""
    out = [body[:-1], body + b"\x00"]
    for i in [*range(min(len(body), 16)), len(body) - 1]:
        out += [body[:i] + bytes([body[i] ^ x]) + body[i + 1:] for x in (0x01, 0x80, 0xFF)]
    return out


def put_variants(rid: int, data: bytes) -> list[tuple[bytes, bytes]]:
    """(Data frame, End frame) pairs for an upload on *rid*: their bodies changed (each frame
    then framed with its right checksum, so that what is checked after the checksum is
    reached), their headers changed (type code, length, checksum), both on another rid, the
    rid in each of msgpack's uint forms in each frame."""
    data_body, end_body = _data_body(packb(rid), data), b"\x91" + packb(rid)
    good_data, good_end = frame(C.T_DATA, data_body), frame(C.T_END, end_body)
    out = [(frame(C.T_DATA, b), good_end) for b in _changed(data_body)]
    out += [(good_data, frame(C.T_END, b)) for b in _changed(end_body)]
    codes = [C.T_DATA, C.T_END, C.T_CREDIT, C.T_CANCEL, C.T_PUT_START, 0xF0]
    for code in codes:
        out += [(frame(code, data_body), good_end), (good_data, frame(code, end_body))]
    for body, code, other in ((data_body, C.T_DATA, 0), (end_body, C.T_END, 1)):
        checksum = C.HEADER.unpack_from(frame(code, body))[2]
        for delta in (-1, 1):
            bad = C.HEADER.pack(len(body) + delta, code, checksum) + body
            out.append((bad, good_end) if other == 0 else (good_data, bad))
        wrong = frame(code, body, checksum ^ 1)
        out.append((wrong, good_end) if other == 0 else (good_data, wrong))
    for other_rid in RIDS:  # both on another rid (in flight or not)
        if other_rid != rid:
            out.append((frame(C.T_DATA, _data_body(packb(other_rid), data)),
                        frame(C.T_END, b"\x91" + packb(other_rid))))
    forms = ["fix", "u8", "u16", "u32"]
    out += [(frame(C.T_DATA, _data_body(uint(rid, a), data)),
             frame(C.T_END, b"\x91" + uint(rid, b))) for a in forms for b in forms]
    return out


@pytest.mark.parametrize("rid", [1, 0x80, 0x10000])
@pytest.mark.parametrize("size", [1, 300])
@pytest.mark.parametrize("answer", ["end", "never", "early"])
def test_each_change_of_a_put_is_read_alike(rid: int, size: int, answer: str) -> None:
    data = bytes(i % 7 for i in range(size))
    applied = 0
    other = msg_frame(start(rid + 1))  # another upload in flight, its body not sent yet
    for data_frame, end_frame in put_variants(rid, data):
        stream = msg_frame(start(rid)) + data_frame + end_frame
        applied += compare(stream, answer=answer)
        applied += compare(other + stream + msg_frame(wire.Cancel(rid)), answer=answer)
    # Those still a good Data and End (unchanged, a payload byte changed, the rid in the
    # same form in both) in one pass; none once answered (the body then drained).
    assert (applied > 0) == (answer != "early")


@pytest.mark.parametrize("window", [0, 299, 300, 301])
def test_each_change_of_a_put_is_read_alike_at_the_credit(window: int) -> None:
    for data_frame, end_frame in put_variants(0x80, bytes(300)):
        compare(msg_frame(start(0x80)) + data_frame + end_frame, window=window,
                answer="never")


# -- hostile streams, generated -----------------------------------------------------------------

@st.composite
def data_frames(draw: st.DrawFn, rid: int, size: st.SearchStrategy[int]) -> bytes:
    """A Data frame on *rid*, well formed or not: the rid in any uint form or another type,
    the payload a bin or a str, a field more or less, a wrong checksum or type code."""
    payload = bytes(draw(size))
    rid_bytes = draw(st.sampled_from([
        uint(rid, "fix"), uint(rid, "u8"), uint(rid, "u16"), uint(rid, "u32"),
        packb(-1), packb("1"), packb(rid + 1 if rid < C.MAX_RID else 0), packb(1 << 33)]))
    bin_bytes = draw(st.sampled_from(["bin", "bin16", "bin32", "str", "short", "long"]))
    n = len(payload)
    head = {"bin": packb(payload)[:len(packb(payload)) - n],
            "bin16": b"\xc5" + struct.pack(">H", n), "bin32": b"\xc6" + struct.pack(">I", n),
            "str": b"\xd9" + bytes([min(n, 255)]) if n < 256 else b"\xda" + struct.pack(">H", n),
            "short": b"\xc4" + bytes([min(n + 1, 255)]),
            "long": b"\xc5" + struct.pack(">H", max(n - 1, 0))}[bin_bytes]
    fields = draw(st.sampled_from([b"\x92", b"\x91", b"\x93", b"\xdc\x00\x02"]))
    body = fields + rid_bytes + head + payload
    if fields == b"\x93":
        body += b"\xc0"
    code = draw(st.sampled_from([C.T_DATA, C.T_DATA, C.T_DATA, C.T_END, C.T_CREDIT]))
    checksum = draw(st.none() | st.just(0))
    return frame(code, body, checksum)


@st.composite
def end_frames(draw: st.DrawFn, rid: int) -> bytes:
    """An End frame on *rid*, well formed or not."""
    how = draw(st.sampled_from(["fix", "u8", "u16", "u32"]))
    body = draw(st.sampled_from([b"\x91", b"\x92", b"\x90"])) + uint(rid, how)
    if body[0] == 0x92:
        body += b"\x00"
    if draw(st.booleans()):
        body = b"\x91" + packb(draw(st.sampled_from(RIDS)))
    code = draw(st.sampled_from([C.T_END, C.T_END, C.T_END, C.T_DATA, C.T_CANCEL]))
    return frame(code, body, draw(st.none() | st.just(1)))


WINDOWS = [0, 1, 100, 255, 256, C.DEFAULT_WINDOW]
sizes = st.integers(0, 300) | st.sampled_from([w + d for w in WINDOWS[1:5] for d in (-1, 0, 1)])


@st.composite
def extra_frames(draw: st.DrawFn) -> bytes:
    """A frame that is not an upload's next: another request's, a Goodbye, a Hello again,
    or junk."""
    rid = draw(st.sampled_from(RIDS))
    kind = draw(st.sampled_from(
        ["start", "data", "end", "goodbye", "cancel", "credit", "hello", "stat", "junk"]))
    if kind == "start":
        return msg_frame(start(rid))
    if kind == "data":
        return draw(data_frames(rid, sizes))
    if kind == "end":
        return draw(end_frames(rid))
    if kind == "goodbye":
        return msg_frame(wire.Goodbye("closing", "bye"))
    if kind == "cancel":
        return msg_frame(wire.Cancel(rid))
    if kind == "credit":
        return msg_frame(wire.Credit(rid, draw(st.integers(1, 1000))))
    if kind == "hello":
        return msg_frame(wire.Hello(wire.PROTOCOL_VERSION, "c", "x", 10))
    if kind == "stat":
        return msg_frame(wire.StatRequest(rid, "b", "k", None))
    return draw(st.binary(max_size=40))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes], int, str]:
    """A few uploads as a client sends them (a small body in one Data frame, or none), then
    at most one flaw: a Data or End frame broken, a frame slipped in, a byte changed, the
    stream cut short. The pieces it arrives in; the server's window; when it answers an
    upload (see :func:`read`)."""
    frames: list[bytes] = []
    bodies: list[int] = []  # where each upload's frames after its start begin
    for rid, size in draw(st.lists(st.tuples(st.sampled_from(RIDS), sizes), min_size=1,
                                   max_size=4)):
        frames.append(msg_frame(start(rid)))
        bodies.append(len(frames))
        if size or draw(st.booleans()):
            frames.append(msg_frame(wire.Data(rid, bytes(size))))
        frames.append(msg_frame(wire.End(rid)))
    flaw = draw(st.sampled_from(["none", "data", "end", "frame", "flip", "truncate"]))
    at = draw(st.integers(0, len(frames) - 1))
    if flaw == "data":  # the frame after a start (its Data, or End if it has none) broken
        frames[draw(st.sampled_from(bodies))] = draw(data_frames(
            draw(st.sampled_from(RIDS)), sizes))
    elif flaw == "end":
        frames[at] = draw(end_frames(draw(st.sampled_from(RIDS))))
    elif flaw == "frame":
        frames.insert(at, draw(extra_frames()))
    stream = b"".join(frames)
    if flaw == "flip":
        at = draw(st.integers(0, len(stream) - 1))
        stream = stream[:at] + bytes([stream[at] ^ draw(st.integers(1, 255))]) + stream[at + 1:]
    elif flaw == "truncate":
        stream = stream[:draw(st.integers(0, len(stream) - 1))]
    how = draw(st.sampled_from(["whole", "whole", "bytes", "cuts"]))
    if not stream:
        pieces = []
    elif how == "whole":
        pieces = [stream]
    elif how == "bytes":
        pieces = [stream[i:i + 1] for i in range(len(stream))]
    else:
        cuts = sorted(set(draw(st.lists(st.integers(1, len(stream)), max_size=6))))
        bounds = [0, *[c for c in cuts if c < len(stream)], len(stream)]
        pieces = [stream[i:j] for i, j in itertools.pairwise(bounds)]
    window = draw(st.sampled_from([*WINDOWS, *[C.DEFAULT_WINDOW] * 4]))
    return stream, pieces, window, draw(st.sampled_from(["end", "end", "never", "early"]))


@given(streams())
def test_any_stream_is_read_alike(case: tuple[bytes, list[bytes], int, str]) -> None:
    stream, pieces, window, answer = case
    compare(stream, pieces, window=window, answer=answer)
