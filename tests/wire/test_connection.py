"""The connection rules, both ways: what a peer may not send (ProtocolError on receipt) is what
we may not send (LocalProtocolError, nothing sent, nothing changed)."""

from __future__ import annotations

import pytest

from hdsd import ProtocolError, wire
from hdsd._packing import packb
from hdsd.wire import _constants as C
from hdsd.wire._frames import encode_frame
from hdsd.wire._registry import encode_body
from hdsd.wire.testing import ConnectionPair, feed

REQ_ID = bytes(16)
HELLO = wire.Hello(wire.PROTOCOL_VERSION, "cluster", "peer", wire.DEFAULT_WINDOW)


def put(rid: int = 1) -> wire.PutStart:
    return wire.PutStart(rid, REQ_ID, "bucket", "key", None, {}, None)


def get(rid: int = 1) -> wire.GetRequest:
    return wire.GetRequest(rid, "bucket", "key", None, None, None)


def stat(rid: int = 1) -> wire.StatRequest:
    return wire.StatRequest(rid, "bucket", "key", None)


def raw(msg: wire.Message) -> bytes:
    """The frame of *msg*, built without any state check: what a misbehaving peer sends."""
    return encode_frame(*encode_body(msg), C.MAX_FRAME)


def assert_refused(pair: ConnectionPair, sender: str, msg: wire.Message, match: str) -> None:
    """*msg* is refused when we send it, and kills the connection when the peer does."""
    ours, theirs = (pair.client, pair.server) if sender == "client" else (pair.server, pair.client)
    with pytest.raises(wire.LocalProtocolError, match=match):
        ours.send(msg)
    with pytest.raises(ProtocolError, match=match) as info:
        feed(theirs, raw(msg))
    assert not isinstance(info.value, wire.LocalProtocolError)
    # The error is sticky, and only a Goodbye may still be sent.
    with pytest.raises(ProtocolError, match=match):
        theirs.next_event()
    with pytest.raises(wire.LocalProtocolError):
        theirs.send(wire.StatusRequest(99) if theirs.role is wire.Role.CLIENT else wire.End(1))
    assert theirs.send(wire.Goodbye("protocol", "bye"))


# -- connection phase --------------------------------------------------------------------------


def test_hello_first() -> None:
    pair = ConnectionPair(handshake=False)
    assert_refused(pair, "client", stat(), "before both Hellos")


def test_nothing_but_hello_until_both_hellos_crossed() -> None:
    pair = ConnectionPair(handshake=False)
    pair.to_server(HELLO)
    # The server has the client's Hello but has not sent its own: the client cannot have seen
    # it, so a request now is a violation on both sides.
    with pytest.raises(wire.LocalProtocolError):
        pair.client.send(stat())
    with pytest.raises(ProtocolError, match="before both Hellos"):
        feed(pair.server, raw(stat()))


def test_hello_twice() -> None:
    pair = ConnectionPair()
    assert_refused(pair, "client", HELLO, "twice")


def test_unsupported_protocol_version() -> None:
    pair = ConnectionPair(handshake=False)
    assert_refused(pair, "client", wire.Hello(99, "c", "p", wire.DEFAULT_WINDOW), "version 99")


def test_our_hello_must_announce_the_window_we_enforce() -> None:
    conn = wire.Connection(wire.Role.CLIENT, initial_window=1000)
    with pytest.raises(wire.LocalProtocolError, match="initial_window"):
        conn.send(HELLO)
    assert conn.send(wire.Hello(wire.PROTOCOL_VERSION, "c", "p", 1000))


def test_their_hello_is_exposed() -> None:
    pair = ConnectionPair(server_window=12345)
    assert pair.client.their_hello is not None
    assert pair.client.their_hello.window == 12345
    assert pair.client.their_hello.peer == "server"


def test_a_hello_without_features_is_the_four_field_frame_every_node_knows() -> None:
    # The nodes in service before `features` refuse a five-field Hello: one without features
    # must be byte for byte the Hello they know.
    assert encode_body(HELLO) == (C.T_HELLO, packb([C.PROTOCOL_VERSION, "cluster", "peer",
                                                    wire.DEFAULT_WINDOW]))


def test_features_both_hellos_announce_are_the_connections() -> None:
    pair = ConnectionPair(handshake=False)
    assert pair.client.features == frozenset()
    pair.to_server(wire.Hello(C.PROTOCOL_VERSION, "c", "client", wire.DEFAULT_WINDOW,
                              ("sealed-names", "big-frames")))
    pair.to_client(wire.Hello(C.PROTOCOL_VERSION, "c", "server", wire.DEFAULT_WINDOW,
                              ("big-frames", "later")))
    assert pair.client.features == pair.server.features == frozenset({"big-frames"})
    assert pair.server.their_hello is not None
    assert pair.server.their_hello.features == ("sealed-names", "big-frames")


def test_a_peer_without_features_shares_none() -> None:
    pair = ConnectionPair(handshake=False)
    pair.to_server(wire.Hello(C.PROTOCOL_VERSION, "c", "client", wire.DEFAULT_WINDOW,
                              ("big-frames",)))
    pair.to_client(wire.Hello(C.PROTOCOL_VERSION, "c", "server", wire.DEFAULT_WINDOW))
    assert pair.client.features == pair.server.features == frozenset()


@pytest.mark.parametrize("features", [
    "big-frames",  # not an array
    [1],
    [""],
    ["x" * (C.MAX_CODE_CHARS + 1)],
    ["f"] * (C.MAX_FEATURES + 1),
])
def test_malformed_features_are_a_protocol_error(features: object) -> None:
    conn = wire.Connection(wire.Role.SERVER)
    body = packb([C.PROTOCOL_VERSION, "c", "p", wire.DEFAULT_WINDOW, features])
    with pytest.raises(ProtocolError, match="malformed Hello: features"):
        feed(conn, encode_frame(C.T_HELLO, body, C.MAX_FRAME))


def test_goodbye_any_time_then_nothing() -> None:
    pair = ConnectionPair(handshake=False)
    bye = wire.Goodbye("authentication_failed", "wrong cluster")
    assert pair.to_client(bye) == [bye]
    with pytest.raises(wire.LocalProtocolError, match="after Goodbye"):
        pair.server.send(HELLO)
    with pytest.raises(ProtocolError, match="after Goodbye"):
        feed(pair.client, raw(HELLO))


def test_eof_after_whole_frames_is_connection_closed() -> None:
    pair = ConnectionPair()
    pair.to_server(stat())
    events = feed(pair.server, b"")
    assert events == [wire.ConnectionClosed()]
    assert pair.server.next_event() == wire.ConnectionClosed()
    with pytest.raises(wire.LocalProtocolError):
        pair.server.receive_data(b"more")


def test_eof_in_the_middle_of_a_frame_is_a_protocol_error() -> None:
    pair = ConnectionPair()
    frame = pair.client.send(stat())
    feed(pair.server, frame[:-1])
    with pytest.raises(ProtocolError, match="middle of a frame"):
        feed(pair.server, b"")


def test_constructor_limits() -> None:
    with pytest.raises(ValueError):
        wire.Connection(wire.Role.CLIENT, max_frame=C.MIN_MAX_FRAME - 1)
    with pytest.raises(ValueError):
        wire.Connection(wire.Role.CLIENT, initial_window=-1)


# -- requests ----------------------------------------------------------------------------------


def test_requests_and_replies_go_one_way_only() -> None:
    pair = ConnectionPair()
    assert_refused(pair, "server", stat(), "server may not send")
    pair = ConnectionPair()
    assert_refused(pair, "client", wire.Reply(1, {}), "client may not send")


def test_duplicate_rid() -> None:
    pair = ConnectionPair()
    pair.to_server(stat(5))
    assert_refused(pair, "client", get(5), "already in flight")


def test_rid_is_free_again_after_the_final() -> None:
    pair = ConnectionPair()
    pair.to_server(stat(5))
    assert pair.client.in_flight(5) and pair.server.in_flight(5)
    assert pair.to_client(wire.Reply(5, {"size": 3})) == [wire.Reply(5, {"size": 3})]
    assert not pair.client.in_flight(5) and not pair.server.in_flight(5)
    assert pair.to_server(put(5)) == [put(5)]


def test_reply_for_an_unknown_rid() -> None:
    pair = ConnectionPair()
    assert_refused(pair, "server", wire.Reply(3, {}), "not in flight")


def test_many_requests_interleave() -> None:
    pair = ConnectionPair()
    pair.to_server(stat(1), put(2), get(3))
    assert pair.to_client(wire.GetStart(3, {"size": 2}), wire.Data(3, b"ab")) == [
        wire.GetStart(3, {"size": 2}),
        wire.Data(3, b"ab"),
    ]
    assert pair.to_server(wire.Data(2, b"xyz"), wire.End(2)) == [wire.Data(2, b"xyz"), wire.End(2)]
    pair.to_client(wire.Reply(2, {}), wire.End(3), wire.ErrorReply(1, "not_found", "no"))
    assert not any(pair.client.in_flight(r) or pair.server.in_flight(r) for r in (1, 2, 3))


# -- body streams ------------------------------------------------------------------------------


def test_data_before_put_start() -> None:
    pair = ConnectionPair()
    assert_refused(pair, "client", wire.Data(1, b"x"), "not in flight")


def test_data_on_a_request_without_a_body() -> None:
    pair = ConnectionPair()
    pair.to_server(stat(1))
    assert_refused(pair, "client", wire.Data(1, b"x"), "not allowed")


def test_data_in_the_wrong_direction() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1))
    assert_refused(pair, "server", wire.Data(1, b"x"), "not allowed")


def test_get_data_needs_get_start_first() -> None:
    pair = ConnectionPair()
    pair.to_server(get(1))
    assert pair.server.send_credit_available(1) == 0
    assert_refused(pair, "server", wire.Data(1, b"x"), "not allowed")


def test_download_credit_is_known_before_get_start() -> None:
    # What lets a node send a small get's GetStart, Data and End in one write.
    pair = ConnectionPair(client_window=4)
    pair.to_server(get(1))
    assert pair.server.download_credit(1) == 4
    assert pair.client.download_credit(1) == 0  # the client never sends a download body
    assert pair.server.download_credit(2) == 0  # not in flight
    pair.to_client(wire.GetStart(1, {}), wire.Data(1, b"abc"))
    assert pair.server.download_credit(1) == 1 == pair.server.send_credit_available(1)
    pair.to_client(wire.End(1))
    assert pair.server.download_credit(1) == 0


def test_data_after_end() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1), wire.End(1))
    assert_refused(pair, "client", wire.Data(1, b"x"), "not allowed")


def test_reply_to_a_put_needs_the_whole_body() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1), wire.Data(1, b"half"))
    assert_refused(pair, "server", wire.Reply(1, {}), "before the whole body")


def test_data_beyond_credit_both_ways() -> None:
    pair = ConnectionPair(server_window=10)
    pair.to_server(put(1))
    assert pair.client.send_credit_available(1) == 10
    pair.to_server(wire.Data(1, b"1234567"))
    assert pair.client.send_credit_available(1) == 3
    assert_refused(pair, "client", wire.Data(1, b"abcd"), "exceeds")


def test_a_refused_send_changes_nothing() -> None:
    pair = ConnectionPair(server_window=10)
    pair.to_server(put(1))
    with pytest.raises(wire.LocalProtocolError):
        pair.client.send(wire.Data(1, b"x" * 11))
    assert pair.client.send_credit_available(1) == 10
    assert pair.to_server(wire.Data(1, b"x" * 10)) == [wire.Data(1, b"x" * 10)]


def test_credit_adds() -> None:
    pair = ConnectionPair(server_window=0)
    pair.to_server(put(1))
    assert pair.client.send_credit_available(1) == 0
    with pytest.raises(wire.LocalProtocolError):
        pair.client.send(wire.Data(1, b"x"))
    assert pair.to_client(wire.Credit(1, 5), wire.Credit(1, 3)) == [
        wire.Credit(1, 5),
        wire.Credit(1, 3),
    ]
    assert pair.client.send_credit_available(1) == 8
    pair.to_server(wire.Data(1, b"x" * 8))
    assert pair.client.send_credit_available(1) == 0


def test_download_credit_from_the_client() -> None:
    pair = ConnectionPair(client_window=4)
    pair.to_server(get(1))
    pair.to_client(wire.GetStart(1, {}))
    assert pair.server.send_credit_available(1) == 4
    pair.to_client(wire.Data(1, b"abcd"))
    assert_refused(pair, "server", wire.Data(1, b"e"), "exceeds")
    pair = ConnectionPair(client_window=4)
    pair.to_server(get(1))
    pair.to_client(wire.GetStart(1, {}), wire.Data(1, b"abcd"))
    assert pair.to_server(wire.Credit(1, 100)) == [wire.Credit(1, 100)]
    assert pair.server.send_credit_available(1) == 100


def test_credit_on_a_request_without_a_stream() -> None:
    pair = ConnectionPair()
    pair.to_server(stat(1))
    assert_refused(pair, "client", wire.Credit(1, 10), "not allowed")
    pair = ConnectionPair()
    pair.to_server(get(1))
    assert_refused(pair, "server", wire.Credit(1, 10), "not allowed")


def test_outstanding_credit_is_bounded() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1))
    grant = wire.Credit(1, C.MAX_CREDIT_GRANT)
    n = (C.MAX_OUTSTANDING_CREDIT - wire.DEFAULT_WINDOW) // C.MAX_CREDIT_GRANT
    # Fast-forward both views of the counter instead of sending 65536 frames.
    pair.server._rids[1].credit = pair.client._rids[1].credit = (
        wire.DEFAULT_WINDOW + n * C.MAX_CREDIT_GRANT
    )
    assert_refused(pair, "server", grant, "would exceed")


# -- the tolerated crossings -------------------------------------------------------------------


def test_drain_after_error_reply_mid_put() -> None:
    pair = ConnectionPair(server_window=100)
    pair.to_server(put(1), wire.Data(1, b"x" * 30))
    # The client keeps sending while the server's refusal is in flight.
    in_flight = pair.client.send(wire.Data(1, b"y" * 50))
    in_flight += pair.client.send(wire.Data(1, b"z" * 20))
    refusal = wire.ErrorReply(1, "not_found", "no such bucket")
    assert pair.to_client(refusal) == [refusal]
    assert feed(pair.server, in_flight) == []  # tolerated and dropped
    assert pair.server.in_flight(1) and pair.client.in_flight(1)
    # The client has seen the refusal and closes its half; the rid is free on both sides.
    assert pair.to_server(wire.Cancel(1)) == []
    assert not pair.server.in_flight(1) and not pair.client.in_flight(1)
    assert pair.to_server(put(1)) == [put(1)]


def test_drain_ends_with_end_too() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1))
    pair.to_client(wire.ErrorReply(1, "permission_denied", "read-only"))
    assert pair.to_server(wire.Data(1, b"late"), wire.End(1)) == []
    assert not pair.server.in_flight(1)


def test_the_drain_is_bounded_by_the_credit_granted() -> None:
    pair = ConnectionPair(server_window=10)
    pair.to_server(put(1))
    pair.to_client(wire.ErrorReply(1, "not_found", "no"))
    assert pair.to_server(wire.Data(1, b"x" * 10)) == []
    with pytest.raises(ProtocolError, match="exceeds"):
        feed(pair.server, raw(wire.Data(1, b"!")))


def test_no_new_request_on_a_rid_still_draining() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1))
    pair.to_client(wire.ErrorReply(1, "not_found", "no"))
    assert_refused(pair, "client", put(1), "already in flight")


def test_server_sends_nothing_after_its_final() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1))
    pair.to_client(wire.ErrorReply(1, "not_found", "no"))
    # Granting credit as the drained bytes are consumed is moot, not an error: nothing is sent.
    assert pair.server.send(wire.Credit(1, 10)) == b""
    with pytest.raises(ProtocolError):
        feed(pair.client, raw(wire.Credit(1, 10)))
    with pytest.raises(wire.LocalProtocolError):
        pair.server.send(wire.End(1))


def test_credit_for_a_stream_that_is_over_is_moot() -> None:
    pair = ConnectionPair()
    pair.to_server(get(1))
    pair.to_client(wire.GetStart(1, {}), wire.Data(1, b"abc"), wire.End(1))
    # The application consumed the last bytes after the reader had already seen End.
    assert pair.client.send(wire.Credit(1, 3)) == b""
    pair.to_server(put(2), wire.End(2))
    assert pair.server.send(wire.Credit(2, 3)) == b""
    pair.to_server(get(3), wire.Cancel(3))
    assert pair.client.send(wire.Credit(3, 3)) == b""
    # A Credit on a rid that never had that stream is still a bug.
    pair.to_server(stat(4))
    with pytest.raises(wire.LocalProtocolError):
        pair.client.send(wire.Credit(4, 3))


def test_client_cancel_of_a_download_drops_what_is_in_flight() -> None:
    pair = ConnectionPair(client_window=8)
    pair.to_server(get(1))
    in_flight = pair.server.send(wire.GetStart(1, {"size": 100})) + pair.server.send(
        wire.Data(1, b"12345678")
    )
    assert pair.to_server(wire.Cancel(1)) == [wire.Cancel(1)]
    assert feed(pair.client, in_flight) == []
    assert pair.client.send(wire.Credit(1, 10)) == b""  # a client that gave up grants nothing
    # The server answers the Cancel with its final, which tells the client the rid is free.
    assert pair.to_client(wire.Cancel(1)) == [wire.Cancel(1)]
    assert not pair.client.in_flight(1) and not pair.server.in_flight(1)


def test_data_after_cancel_still_respects_credit() -> None:
    pair = ConnectionPair(client_window=8)
    pair.to_server(get(1))
    pair.to_client(wire.GetStart(1, {}))
    pair.to_server(wire.Cancel(1))
    with pytest.raises(ProtocolError, match="exceeds"):
        feed(pair.client, raw(wire.Data(1, b"x" * 9)))


def test_late_credit_and_cancel_after_the_final_are_dropped() -> None:
    pair = ConnectionPair(client_window=8)
    pair.to_server(get(1))
    late = pair.client.send(wire.Credit(1, 8)) + pair.client.send(wire.Cancel(1))
    pair.to_client(wire.GetStart(1, {}), wire.Data(1, b"x"), wire.End(1))
    assert not pair.server.in_flight(1)
    assert feed(pair.server, late) == []


def test_the_client_itself_may_not_cancel_or_credit_a_finished_rid() -> None:
    pair = ConnectionPair()
    pair.to_server(get(1))
    pair.to_client(wire.ErrorReply(1, "not_found", "no"))
    with pytest.raises(wire.LocalProtocolError, match="not in flight"):
        pair.client.send(wire.Cancel(1))


def test_reply_after_cancel_of_a_complete_put_is_delivered() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1), wire.End(1), wire.Cancel(1))
    # The put was applied before the Cancel arrived: the Reply says so, and frees the rid.
    assert pair.to_client(wire.Reply(1, {"version": "v"})) == [wire.Reply(1, {"version": "v"})]
    assert not pair.client.in_flight(1) and not pair.server.in_flight(1)


def test_no_reply_to_an_aborted_put() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1), wire.Data(1, b"part"), wire.Cancel(1))
    assert_refused(pair, "server", wire.Reply(1, {}), "before the whole body")


def test_cancel_twice() -> None:
    pair = ConnectionPair()
    pair.to_server(stat(1), wire.Cancel(1))
    assert_refused(pair, "client", wire.Cancel(1), "not allowed")


def test_server_credit_after_the_upload_ended_is_swallowed() -> None:
    pair = ConnectionPair()
    pair.to_server(put(1))
    credit = pair.server.send(wire.Credit(1, 10))
    pair.to_server(wire.End(1))
    assert feed(pair.client, credit) == []
    assert pair.client.in_flight(1)


# -- sending limits ----------------------------------------------------------------------------


def test_send_refuses_frames_over_max_frame() -> None:
    pair = ConnectionPair(max_frame=C.MIN_MAX_FRAME)
    pair.to_server(stat(1))
    with pytest.raises(wire.LocalProtocolError, match="frame limit"):
        pair.server.send(wire.Reply(1, {"blob": b"x" * C.MIN_MAX_FRAME}))
    assert pair.server.in_flight(1)


def test_send_refuses_what_msgpack_cannot_carry() -> None:
    pair = ConnectionPair()
    pair.to_server(stat(1))
    with pytest.raises(wire.LocalProtocolError, match="encode"):
        pair.server.send(wire.Reply(1, {"set": {1, 2}}))
    assert pair.server.in_flight(1)
