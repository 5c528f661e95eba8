"""GetMany (0x70): many versions as one download — sans-IO round trip and malformed input."""

from __future__ import annotations

import pytest

from hdsd import InvalidRequest, ProtocolError
from hdsd.wire import (
    MAX_GET_MANY,
    UNSENT,
    Cancel,
    Credit,
    Data,
    End,
    GetMany,
    GetStart,
    LocalProtocolError,
)
from hdsd.wire._registry import decode_body, encode_body
from hdsd.wire.testing import ConnectionPair

ITEMS = [["b", "k1", None], ["b", "k2", "0000000000000001.n1"], ["c", "k3", None]]
ANSWER = {"items": [{"version": "0000000000000002.n1", "size": 3, "content_hash": "aa"},
                    {"error": "not_found", "message": "b/k2 version ... not found"},
                    {"version": "0000000000000003.n1", "size": 2, "content_hash": "bb"}]}


def test_round_trip_is_a_download_with_credit() -> None:
    pair = ConnectionPair(client_window=4, byte_by_byte=True)
    request = GetMany(5, ITEMS)
    assert pair.to_server(request) == [request]
    assert pair.to_client(GetStart(5, ANSWER)) == [GetStart(5, ANSWER)]
    # The bodies back to back: 3 bytes of k1, 2 of k3; frame boundaries mean nothing.
    assert pair.to_client(Data(5, b"aaab")) == [Data(5, b"aaab")]
    with pytest.raises(LocalProtocolError):
        pair.server.send(Data(5, b"b"))  # over the client's window of 4
    assert pair.to_server(Credit(5, 1)) == [Credit(5, 1)]
    assert pair.to_client(Data(5, b"b"), End(5)) == [Data(5, b"b"), End(5)]
    assert not pair.client.in_flight(5) and not pair.server.in_flight(5)


def test_the_client_may_cancel_mid_stream() -> None:
    pair = ConnectionPair()
    pair.to_server(GetMany(9, ITEMS))
    pair.to_client(GetStart(9, ANSWER), Data(9, b"aa"))
    assert pair.to_server(Cancel(9)) == [Cancel(9)]
    # Data already in flight is dropped by the client, then the server's final frees the rid.
    assert pair.to_client(Data(9, b"a")) == []
    pair.to_client(Cancel(9))
    assert not pair.client.in_flight(9)


def test_codec_round_trip_and_reply_type() -> None:
    msg = GetMany(3, ITEMS)
    assert decode_body(*encode_body(msg))[0] == msg
    # sha256 is an optional trailing field: left off the frame while false.
    digests = GetMany(3, ITEMS, sha256=True)
    assert decode_body(*encode_body(digests))[0] == digests
    assert len(encode_body(digests)[1]) == len(encode_body(msg)[1]) + 1
    with pytest.raises(InvalidRequest, match="sha256"):
        GetMany(3, ITEMS, sha256=1)  # type: ignore[arg-type]
    assert GetMany(UNSENT, ITEMS).decode_reply(ANSWER)["items"][1]["error"] == "not_found"
    with pytest.raises(ProtocolError, match="items"):
        GetMany(UNSENT, ITEMS).decode_reply({"sizes": [1]})


@pytest.mark.parametrize("items, why", [
    ([], "1 to"),
    ([["b", "k", None]] * (MAX_GET_MANY + 1), "1 to"),
    ("b/k", "1 to"),
    ([["b", "k"]], r"\[bucket, key, version\]"),
    ([["b", "k", None, 1]], r"\[bucket, key, version\]"),
    ([["", "k", None]], "bucket"),
    ([["b", "", None]], "key"),
    ([["b", "k" * 1025, None]], "key"),
    ([["b", "k", ""]], "version"),
    ([["b", "k", 7]], "version"),
    ([["b", b"k", None]], "key"),
])
def test_malformed_items_are_refused(items: object, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        GetMany(1, items)  # type: ignore[arg-type]
    # ... and the same body arriving on the wire is a protocol error, never a crash.
    code, _ = encode_body(GetMany(1, ITEMS))
    from hdsd._packing import packb
    with pytest.raises(ProtocolError, match="malformed GetMany"):
        decode_body(code, packb([1, items]))


def test_a_body_of_the_wrong_shape_is_a_protocol_error() -> None:
    code, _ = encode_body(GetMany(1, ITEMS))
    from hdsd._packing import packb
    with pytest.raises(ProtocolError, match="GetMany frame"):
        decode_body(code, packb([1]))
    with pytest.raises(ProtocolError, match="GetMany frame"):
        decode_body(code, b"\xc1")
