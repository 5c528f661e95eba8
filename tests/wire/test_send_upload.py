"""``Connection.send_upload``: a whole upload (its start, Data, End) in one pass is the bytes,
the state and the refusals of the three sends one after the other."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hdsd import ProtocolError, wire
from hdsd.wire import _constants as C
from hdsd.wire._connection import ClientHalf, ServerHalf
from hdsd.wire.testing import ConnectionPair, feed

REQ_ID = bytes(range(16))


def put(rid: int, size: int | None = None, *, retry: bool = False,
        metadata: dict[str, str] | None = None) -> wire.PutStart:
    return wire.PutStart(rid, REQ_ID, "bucket", "some/key", size, metadata or {}, None,
                         retry=retry)


def one_by_one(conn: wire.Connection, start: wire.PutStart, data: bytes) -> bytes:
    """What a client sent before: each frame on its own (no Data for an empty body)."""
    out = conn.send(start)
    if data:
        out += conn.send(wire.Data(start.rid, data))
    return out + conn.send(wire.End(start.rid))


def state(conn: wire.Connection, rid: int) -> tuple[bool, int, int, object]:
    """What the connection knows of its rids, down to the records (an upload's credit still
    counts once its body is sent: the server's Credits keep adding to it)."""
    rids = {r: (v.kind, v.client, v.server, v.credit) for r, v in conn._rids.items()}
    return conn.in_flight(rid), conn.requests_in_flight, conn.send_credit_available(rid), rids


# rids at each edge of msgpack's uint encodings (fixint, uint8, uint16, uint32).
RIDS = [1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, C.MAX_RID]
# Body sizes at each edge of msgpack's bin encodings, and none.
SIZES = [0, 1, 0xFF, 0x100, 4096, 0xFFFF, 0x10000, 300_000]


@pytest.mark.parametrize("rid", RIDS)
@pytest.mark.parametrize("size", SIZES)
def test_the_same_bytes_and_state_as_the_frames_one_by_one(rid: int, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    start = put(rid, size, retry=size % 2 == 1, metadata={"a": "b"} if size else None)
    ours, theirs = ConnectionPair(), ConnectionPair()
    sent = b"".join(ours.client.send_upload(start, data))
    assert sent == one_by_one(theirs.client, start, data)
    assert state(ours.client, rid) == state(theirs.client, rid)
    # The server takes them as the frames they are, however the bytes are cut.
    expected = [start, *([wire.Data(rid, data)] if data else []), wire.End(rid)]
    assert feed(ours.server, sent, byte_by_byte=size <= 0x100) == expected
    # The upload's rid stays in flight until the server's final, on both ends.
    reply = wire.Reply(rid, {"ok": True})
    assert feed(ours.client, ours.server.send(reply)) == [reply]
    assert not ours.client.in_flight(rid) and not ours.server.in_flight(rid)


def test_the_body_is_not_copied() -> None:
    data = bytes(200_000)
    pieces = ConnectionPair().client.send_upload(put(1, len(data)), data)
    assert any(piece is data for piece in pieces)


@pytest.mark.parametrize("rid", [1, 0x80, 0x10000])
def test_at_the_data_frame_limit(rid: int) -> None:
    """The largest body whose Data frame fits ``max_frame`` goes; one byte more is refused as
    the Data frame's own send refuses it, and then nothing was sent or changed."""
    limit = C.MIN_MAX_FRAME
    prefix = len(b"\x92") + (1 if rid < 0x80 else 2 if rid < 0x100 else 5) + 3  # bin16
    fits = bytes(limit - prefix)
    ours, theirs = ConnectionPair(max_frame=limit), ConnectionPair(max_frame=limit)
    sent = b"".join(ours.client.send_upload(put(rid), fits))
    assert sent == one_by_one(theirs.client, put(rid), fits)
    assert feed(ours.server, sent)[1] == wire.Data(rid, fits)

    over = fits + b"x"
    ours, theirs = ConnectionPair(max_frame=limit), ConnectionPair(max_frame=limit)
    theirs.client.send(put(rid))
    with pytest.raises(wire.LocalProtocolError, match="frame limit") as per_frame:
        theirs.client.send(wire.Data(rid, over))
    with pytest.raises(wire.LocalProtocolError) as at_once:
        ours.client.send_upload(put(rid), over)
    assert str(at_once.value) == str(per_frame.value)
    assert state(ours.client, rid) [:3] == (False, 0, 0)


def outcome(conn: wire.Connection, start: wire.PutStart, data: bytes) -> bytes | str:
    try:
        return b"".join(conn.send_upload(start, data))
    except ProtocolError as exc:
        return f"{type(exc).__name__}: {exc}"


def refusal(make: Callable[[], ConnectionPair], setup: list[wire.Message],
            start: wire.PutStart, data: bytes) -> None:
    """send_upload of *start* and *data* on a client that sent *setup* first raises what the
    first refused frame of the sends one by one raises, and changes nothing."""
    ours, theirs, control = make(), make(), make()
    for msg in setup:
        for pair in (ours, theirs, control):
            pair.client.send(msg)
    before = state(ours.client, start.rid)
    with pytest.raises(ProtocolError) as per_frame:
        one_by_one(theirs.client, start, data)
    with pytest.raises(type(per_frame.value)) as at_once:
        ours.client.send_upload(start, data)
    assert str(at_once.value) == str(per_frame.value)
    assert state(ours.client, start.rid) == before
    # Nothing changed: what comes next goes as on a client that never tried.
    for rid, body in ((start.rid + 1, b"abc"), (start.rid, b"")):
        assert outcome(ours.client, put(rid), body) == outcome(control.client, put(rid), body)
        assert state(ours.client, rid) == state(control.client, rid)


def test_refused_before_the_hellos() -> None:
    def make() -> ConnectionPair:
        return ConnectionPair(handshake=False)
    refusal(make, [], put(1), b"abc")


def test_refused_after_goodbye() -> None:
    refusal(ConnectionPair, [wire.Goodbye("closing", "bye")], put(1), b"abc")


def test_refused_on_a_rid_in_flight() -> None:
    refusal(ConnectionPair, [put(1)], put(1), b"abc")


def test_refused_beyond_the_credit_of_a_new_upload() -> None:
    def make() -> ConnectionPair:
        return ConnectionPair(server_window=1000)
    refusal(make, [], put(1), bytes(1001))


def test_a_body_within_the_credit_goes() -> None:
    ours, theirs = ConnectionPair(server_window=1000), ConnectionPair(server_window=1000)
    assert (b"".join(ours.client.send_upload(put(1), bytes(1000)))
            == one_by_one(theirs.client, put(1), bytes(1000)))
    assert state(ours.client, 1) == state(theirs.client, 1) == (
        True, 1, 0, {1: (wire.Kind.UPLOAD, ClientHalf.SENT, ServerHalf.ACCEPTING, 0)})


def test_refused_after_the_peer_broke_the_protocol() -> None:
    pair = ConnectionPair()
    with pytest.raises(ProtocolError):
        feed(pair.client, b"\x00\x00\x00\x01\xff" + bytes(8) + b"\x00")
    with pytest.raises(wire.LocalProtocolError, match="only a Goodbye"):
        pair.client.send_upload(put(1), b"abc")
    assert state(pair.client, 1) [:3] == (False, 0, 0)


def test_a_server_may_not_send_an_upload() -> None:
    pair = ConnectionPair()
    with pytest.raises(wire.LocalProtocolError, match="may not send PutStart"):
        pair.server.send_upload(put(1), b"abc")
    assert state(pair.server, 1) [:3] == (False, 0, 0)


def test_only_an_upload_opener() -> None:
    pair = ConnectionPair()
    with pytest.raises(wire.LocalProtocolError, match="does not open an upload"):
        pair.client.send_upload(wire.StatRequest(1, "bucket", "key", None),  # type: ignore[arg-type]
                                b"abc")
    assert state(pair.client, 1) [:3] == (False, 0, 0)
