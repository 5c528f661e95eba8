"""Message constructors validate; the codec round-trips every type; the registry is complete."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd import InvalidRequest, NotFound, ProtocolError, wire
from hdsd._packing import packb
from hdsd.wire import Reply, frame_size
from hdsd.wire import _constants as C
from hdsd.wire._frames import encode_frame
from hdsd.wire._registry import decode_body, encode_body, message_type, packed_size

from .strategies import STRATEGIES, messages

RID = 7
REQ_ID = bytes(range(16))


def test_every_registered_type_has_a_strategy_and_a_unique_code() -> None:
    classes = [t.cls for t in wire.MESSAGE_TYPES]
    assert set(classes) == set(STRATEGIES)
    codes = [t.code for t in wire.MESSAGE_TYPES]
    assert len(set(codes)) == len(codes)
    peer = {wire.Replicate, wire.FetchVersions, wire.FetchChunk, wire.FetchChunks,
            wire.PeerStatusRequest,
            wire.SiteModeRequest, wire.ListPeer, wire.TreeLevel, wire.LeafDiff,
            wire.MaintenanceRequest, wire.AuditShip, wire.ListBucketsPeer,
            wire.CatalogPush, wire.CatalogSync, wire.TenantVote, wire.LayoutPush}
    for t in wire.MESSAGE_TYPES:
        # client messages below 0x80, node-to-node and admin messages from 0x80 up
        assert (t.code >= 0x80) == (t.cls in peer), t


@given(messages)
def test_codec_round_trip(msg: wire.Message) -> None:
    code, body = encode_body(msg)
    assert code == message_type(msg).code
    decoded, kind = decode_body(code, body)
    assert decoded == msg
    assert kind is message_type(msg).kind


def _put(**overrides: Any) -> wire.PutStart:
    fields: dict[str, Any] = dict(
        rid=RID, request_id=REQ_ID, bucket="b", key="k", size=None, metadata={}, policy=None
    )
    fields.update(overrides)
    return wire.PutStart(**fields)


@pytest.mark.parametrize(
    "overrides",
    [
        {"rid": -1},
        {"rid": C.MAX_RID + 1},
        {"rid": True},  # a bool is not an int here
        {"request_id": REQ_ID[:15]},
        {"request_id": "0123456789abcdef"},
        {"bucket": ""},
        {"bucket": "b" * (C.MAX_BUCKET_CHARS + 1)},
        {"key": ""},
        {"key": "k" * (C.MAX_KEY_BYTES + 1)},
        {"key": "€" * 342},  # 342 characters but 1026 UTF-8 bytes
        {"key": "bad\udc80surrogate"},
        {"size": -1},
        {"size": 1 << 63},
        {"size": 1.0},
        {"metadata": {"k": "v" * C.MAX_METADATA_BYTES}},
        {"metadata": {"": "v"}},
        {"metadata": {"k": 1}},
        {"metadata": [("k", "v")]},
        {"policy": ""},
        {"policy": "p" * (C.MAX_POLICY_CHARS + 1)},
    ],
)
def test_put_start_rejects_out_of_bounds_fields(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        _put(**overrides)


def test_limits_are_inclusive() -> None:
    _put(
        rid=C.MAX_RID,
        bucket="b" * C.MAX_BUCKET_CHARS,
        key="€" * (C.MAX_KEY_BYTES // 3) + "k",  # exactly 1024 bytes
        size=C.MAX_U63,
        metadata={"k": "v" * (C.MAX_METADATA_BYTES - 1)},
        policy="p" * C.MAX_POLICY_CHARS,
    )
    assert len(("€" * (C.MAX_KEY_BYTES // 3) + "k").encode()) == C.MAX_KEY_BYTES


@pytest.mark.parametrize(
    "build",
    [
        lambda: wire.GetRequest(RID, "b", "k", None, 10, 9),
        lambda: wire.GetRequest(RID, "b", "k", "", None, None),
        lambda: wire.ListRequest(RID, "b", "", "", 0, False),
        lambda: wire.ListRequest(RID, "b", "", "", C.MAX_LIST_LIMIT + 1, False),
        lambda: wire.ListRequest(RID, "b", "", "", 10, 1),  # type: ignore[arg-type]
        lambda: wire.Credit(RID, 0),
        lambda: wire.Credit(RID, C.MAX_CREDIT_GRANT + 1),
        lambda: wire.Data(RID, bytearray(b"x")),  # type: ignore[arg-type]
        lambda: wire.Hello(C.PROTOCOL_VERSION, "c", "p", -1),
        lambda: wire.Hello(C.PROTOCOL_VERSION, "c" * (C.MAX_NAME_BYTES + 1), "p", 0),
        lambda: wire.Reply(RID, {1: "non-str key"}),  # type: ignore[dict-item]
        lambda: wire.GetStart(RID, ["not", "a", "map"]),  # type: ignore[arg-type]
        lambda: wire.ErrorReply(RID, "", "message"),
        lambda: wire.Goodbye("x" * (C.MAX_CODE_CHARS + 1), ""),
    ],
)
def test_other_constructors_validate(build: Any) -> None:
    with pytest.raises(InvalidRequest):
        build()


def test_error_reply_from_exception_carries_the_code_and_truncates() -> None:
    reply = wire.ErrorReply.from_exception(RID, NotFound("é" * C.MAX_TEXT_BYTES))
    assert reply.code == "not_found"
    assert len(reply.message.encode()) <= C.MAX_TEXT_BYTES
    assert wire.ErrorReply.from_exception(RID, KeyError("x")).code == "internal"
    bye = wire.Goodbye.from_exception(ProtocolError("bad \udc80 frame"))
    assert bye.code == "protocol" and "bad" in bye.message


def test_an_optional_field_at_its_default_stays_off_the_wire() -> None:
    # A first attempt's PutStart is the 7-field frame every earlier node decodes; a retry adds
    # the eighth field; an earlier client's 7-field frame still decodes (retry = False).
    first = wire.PutStart(RID, b"r" * 16, "b", "k", 3, {}, None)
    code, body = encode_body(first)
    assert body == packb([RID, b"r" * 16, "b", "k", 3, {}, None])
    assert decode_body(code, body)[0] == first
    retry = wire.PutStart(RID, b"r" * 16, "b", "k", 3, {}, None, retry=True)
    code, body = encode_body(retry)
    assert body == packb([RID, b"r" * 16, "b", "k", 3, {}, None, True])
    assert decode_body(code, body)[0] == retry
    code, body = encode_body(wire.DeleteRequest(RID, b"r" * 16, "b", "k"))
    assert decode_body(code, body)[0] == wire.DeleteRequest(RID, b"r" * 16, "b", "k")
    with pytest.raises(ProtocolError, match="array of 7 to 8 fields"):
        decode_body(C.T_PUT_START, packb([RID, b"r" * 16, "b", "k", 3, {}]))
    with pytest.raises(ProtocolError, match="malformed PutStart"):
        decode_body(C.T_PUT_START, packb([RID, b"r" * 16, "b", "k", 3, {}, None, "yes"]))


@pytest.mark.parametrize("msg", [wire.End(RID), wire.Cancel(RID), wire.StatusRequest(RID)],
                         ids=lambda m: type(m).__name__)
def test_a_message_of_one_field_is_an_array_of_one(msg: wire.Message) -> None:
    # The registry reads fields with one attrgetter, which answers a lone field's value
    # itself, not in a tuple: the frame must still be the array the spec and old nodes know.
    code, body = encode_body(msg)
    assert body == packb([RID])
    assert decode_body(code, body)[0] == msg


@pytest.mark.parametrize(
    ("code", "body", "why"),
    [
        (0x00, packb([]), "unknown frame type"),
        (0xEE, packb([]), "unknown frame type"),
        (C.T_END, packb({"rid": 1}), "array of 1"),
        (C.T_END, packb([1, 2]), "array of 1"),
        (C.T_END, packb([-1]), "malformed End"),
        (C.T_DATA, packb([1, "text, not bytes"]), "malformed Data"),
        (C.T_END, b"\xc1", "malformed msgpack"),
        (C.T_END, packb([1]) + b"\x00", "malformed msgpack"),
        (C.T_END, b"", "malformed msgpack"),
    ],
)
def test_decode_refuses_malformed_bodies(code: int, body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_body(code, body)


@pytest.mark.parametrize("args", [
    ("", b"", ""),  # nothing to revoke
    ("0a", b"", ""),  # leading zero: not the canonical serial
    ("AB", b"", ""),  # upper case
    ("1" * 41, b"", ""),  # wider than 20 octets
    ("ab", b"x" * ((16 << 10) + 1), ""),  # a certificate larger than any real one
])
def test_cert_revoke_limits(args: tuple[str, bytes, str]) -> None:
    with pytest.raises(InvalidRequest):
        wire.CertRevoke(RID, *args)


_SIZES = st.sampled_from([0, 1, 0xFF, 0x100, 0xFFFF, 0x10000])
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.text(max_size=40), st.binary(max_size=300),
                    _SIZES.map(bytes), st.floats(allow_nan=False))
_PACKABLE = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=18),
                            st.dictionaries(st.text(max_size=8), inner, max_size=18)),
    max_leaves=60)


@given(_PACKABLE)
def test_packed_size_is_the_encoded_length(obj: object) -> None:
    # frame_size counts repair traffic with it instead of encoding each megabyte chunk again.
    assert packed_size(obj) == len(packb(obj))


def test_frame_size_is_the_frame_the_connection_sends() -> None:
    for n in (0, 255, 256, 65_535, 65_536, 1 << 20):
        reply = Reply(rid=70_000, body={"payload": bytes(n), "more": False})
        assert frame_size(reply) == len(encode_frame(*encode_body(reply), C.MAX_FRAME))
