"""Every message type through a real pair: send → receive_data → next_event, whole and byte by
byte, each in the smallest state where it is legal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hdsd import wire
from hdsd.wire.testing import ConnectionPair

from .strategies import STRATEGIES

REQ_ID = bytes(16)
C, S = "client", "server"


def _setup(msg: wire.Message) -> tuple[list[tuple[str, wire.Message]], str]:
    """The frames that make *msg* legal next, and who sends *msg*."""
    if isinstance(msg, wire.Hello | wire.Goodbye):
        return [], C
    rid: int = msg.rid  # type: ignore[attr-defined]
    put = (C, wire.PutStart(rid, REQ_ID, "b", "k", None, {}, None))
    get = (C, wire.GetRequest(rid, "b", "k", None, None, None))
    stat = (C, wire.StatRequest(rid, "b", "k", None))
    match msg:
        case wire.PutStart() | wire.GetRequest() | wire.StatRequest() | wire.ListRequest():
            return [], C
        case wire.GetMany():
            return [], C
        case wire.DeleteRequest() | wire.VersionsRequest() | wire.StatusRequest():
            return [], C
        case wire.Replicate() | wire.FetchVersions() | wire.FetchChunk() | wire.FetchChunks():
            return [], C
        case wire.PeerStatusRequest() | wire.SiteModeRequest() | wire.ListPeer():
            return [], C
        case wire.TreeLevel() | wire.LeafDiff() | wire.MaintenanceRequest():
            return [], C
        case wire.AuditShip() | wire.ListBucketsRequest() | wire.ListBucketsPeer():
            return [], C
        case wire.TenantCreate() | wire.TenantList() | wire.TenantShred() | wire.BucketCreate():
            return [], C
        case wire.BucketList() | wire.HoldSet() | wire.CatalogPush() | wire.CatalogSync():
            return [], C
        case wire.HoldList() | wire.CertRevoke() | wire.CertList():
            return [], C
        case wire.TenantConfirm() | wire.TenantAbandon() | wire.TenantVote():
            return [], C
        case wire.LayoutPush():
            return [], C
        case wire.S3KeyCreate() | wire.S3KeyList() | wire.S3KeyRevoke():
            return [], C
        case wire.Data() | wire.End():
            return [put], C
        case wire.Credit():
            return [get], C
        case wire.Cancel():
            return [stat], C
        case wire.GetStart():
            return [get], S
        case wire.Reply() | wire.ErrorReply():
            return [stat], S
    raise AssertionError(f"no setup for {msg!r}")


def _server_side(msg: wire.Message) -> list[tuple[str, wire.Message]]:
    """A second legal path for stream messages: the server → client direction."""
    rid: int = msg.rid  # type: ignore[attr-defined]
    get = (C, wire.GetRequest(rid, "b", "k", None, None, None))
    start = (S, wire.GetStart(rid, {}))
    if isinstance(msg, wire.Data | wire.End):
        return [get, start]
    if isinstance(msg, wire.Credit):
        return [(C, wire.PutStart(rid, REQ_ID, "b", "k", None, {}, None))]
    return [(C, wire.StatRequest(rid, "b", "k", None))]  # Cancel as the server's final


def _deliver(pair: ConnectionPair, sender: str, msg: wire.Message) -> list[wire.Event]:
    return pair.to_server(msg) if sender == C else pair.to_client(msg)


@given(st.one_of(*STRATEGIES.values()), st.booleans())
def test_every_message_round_trips(msg: wire.Message, byte_by_byte: bool) -> None:
    setup, sender = _setup(msg)
    if isinstance(msg, wire.Hello):
        # The Hello a connection sends must announce its own receive window.
        pair = ConnectionPair(handshake=False, byte_by_byte=byte_by_byte,
                              client_window=msg.window)
    else:
        pair = ConnectionPair(byte_by_byte=byte_by_byte)
    for who, m in setup:
        assert _deliver(pair, who, m) == [m]
    assert _deliver(pair, sender, msg) == [msg]


@given(st.one_of(*(STRATEGIES[t] for t in (wire.Data, wire.End, wire.Credit, wire.Cancel))),
       st.booleans())
def test_stream_messages_round_trip_in_the_other_direction(
    msg: wire.Message, byte_by_byte: bool
) -> None:
    pair = ConnectionPair(byte_by_byte=byte_by_byte)
    for who, m in _server_side(msg):
        assert _deliver(pair, who, m) == [m]
    assert pair.to_client(msg) == [msg]
