"""The registry: frame type codes ↔ message classes and what each does, and the body codec.

Adding a message type is one dataclass (in :mod:`._messages` or :mod:`._peer`) plus one line in
:data:`MESSAGE_TYPES`.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .._errors import InvalidRequest, ProtocolError
from .._packing import PackError, packb, unpackb
from . import _constants as C
from ._admin import (
    BucketCreate,
    BucketList,
    CatalogPush,
    CatalogSync,
    CertList,
    CertRevoke,
    HoldList,
    HoldSet,
    S3KeyCreate,
    S3KeyList,
    S3KeyRevoke,
    TenantAbandon,
    TenantConfirm,
    TenantCreate,
    TenantList,
    TenantShred,
    TenantVote,
)
from ._frames import BULK_BYTES
from ._messages import (
    Cancel,
    Credit,
    Data,
    DeleteRequest,
    End,
    ErrorReply,
    GetMany,
    GetRequest,
    GetStart,
    Goodbye,
    Hello,
    Kind,
    ListBucketsRequest,
    ListRequest,
    Message,
    PutStart,
    Reply,
    Request,
    StatRequest,
    StatusRequest,
    VersionsRequest,
)
from ._peer import (
    AuditShip,
    FetchChunk,
    FetchChunks,
    FetchVersions,
    LayoutPush,
    ListBucketsPeer,
    ListPeer,
    PeerStatusRequest,
    Replicate,
    SiteModeRequest,
)
from ._repair import LeafDiff, MaintenanceRequest, TreeLevel

__all__ = ["MESSAGE_TYPES", "MessageType", "bulk_values", "decode_body", "encode_body",
           "message_type"]


@dataclass(frozen=True, slots=True)
class MessageType:
    """One line of the registry: a frame type code, its class and what it does.

    ``optional`` fields were added to a message after it first shipped: they come last, have
    a default, and are left out of the frame while they hold it — so a sender that does not
    use them sends exactly the frame older peers know, and an older sender's shorter frame
    still decodes (the missing fields take their defaults).

    ``values`` reads a message's fields in order (an ``operator.attrgetter``: one C call, not
    a comprehension with a ``getattr`` per field, on every frame sent), ``required`` and
    ``most`` bound a frame's field count (computed once, not per frame decoded)."""

    code: int
    cls: type[Message]
    kind: Kind
    fields: tuple[str, ...]
    values: Callable[[Message], Any]
    required: int
    most: int
    optional: tuple[tuple[str, object], ...] = ()


def _t(code: int, cls: type[Message], kind: Kind, *, optional: tuple[str, ...] = ()) -> MessageType:
    fields: tuple[str, ...] = cls.__match_args__
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert fields[len(fields) - len(optional):] == optional, f"{cls.__name__}: optional fields last"
    assert all(defaults[f] is not dataclasses.MISSING for f in optional), cls.__name__
    return MessageType(code, cls, kind, fields, operator.attrgetter(fields[0], *fields[1:]),
                       len(fields) - len(optional), len(fields),
                       tuple((f, defaults[f]) for f in optional))


MESSAGE_TYPES: Final = (
    # client ↔ node
    _t(C.T_HELLO, Hello, Kind.HELLO, optional=("features",)),
    _t(C.T_GOODBYE, Goodbye, Kind.GOODBYE),
    _t(C.T_PUT_START, PutStart, Kind.UPLOAD, optional=("retry",)),
    _t(C.T_GET_REQUEST, GetRequest, Kind.DOWNLOAD),
    _t(C.T_STAT_REQUEST, StatRequest, Kind.REQUEST),
    _t(C.T_LIST_REQUEST, ListRequest, Kind.REQUEST),
    _t(C.T_DELETE_REQUEST, DeleteRequest, Kind.REQUEST, optional=("retry", "version")),
    _t(C.T_VERSIONS_REQUEST, VersionsRequest, Kind.REQUEST),
    _t(C.T_STATUS_REQUEST, StatusRequest, Kind.REQUEST),
    _t(C.T_LIST_BUCKETS, ListBucketsRequest, Kind.REQUEST),
    _t(C.T_GET_MANY, GetMany, Kind.DOWNLOAD, optional=("sha256",)),
    _t(C.T_DATA, Data, Kind.DATA),
    _t(C.T_END, End, Kind.END),
    _t(C.T_CREDIT, Credit, Kind.CREDIT),
    _t(C.T_CANCEL, Cancel, Kind.CANCEL),
    _t(C.T_GET_START, GetStart, Kind.BODY_START),
    _t(C.T_REPLY, Reply, Kind.REPLY),
    _t(C.T_ERROR_REPLY, ErrorReply, Kind.ERROR_REPLY),
    # node ↔ node (the dialing node is the CLIENT) and admin requests
    _t(C.T_REPLICATE, Replicate, Kind.REQUEST),
    _t(C.T_FETCH_VERSIONS, FetchVersions, Kind.REQUEST),
    _t(C.T_FETCH_CHUNK, FetchChunk, Kind.REQUEST),
    _t(C.T_PEER_STATUS, PeerStatusRequest, Kind.REQUEST),
    _t(C.T_SITE_MODE, SiteModeRequest, Kind.REQUEST),
    _t(C.T_LIST_PEER, ListPeer, Kind.REQUEST),
    _t(C.T_TREE_LEVEL, TreeLevel, Kind.REQUEST),
    _t(C.T_LEAF_DIFF, LeafDiff, Kind.REQUEST),
    _t(C.T_MAINTENANCE, MaintenanceRequest, Kind.REQUEST),
    _t(C.T_FETCH_CHUNKS, FetchChunks, Kind.DOWNLOAD),
    _t(C.T_AUDIT_SHIP, AuditShip, Kind.REQUEST),
    _t(C.T_LIST_BUCKETS_PEER, ListBucketsPeer, Kind.REQUEST),
    _t(C.T_LAYOUT_PUSH, LayoutPush, Kind.REQUEST),
    # tenant administration (client) and catalog replication (node ↔ node)
    _t(C.T_TENANT_CREATE, TenantCreate, Kind.REQUEST),
    _t(C.T_TENANT_LIST, TenantList, Kind.REQUEST),
    _t(C.T_TENANT_SHRED, TenantShred, Kind.REQUEST),
    _t(C.T_BUCKET_CREATE, BucketCreate, Kind.REQUEST),
    _t(C.T_BUCKET_LIST, BucketList, Kind.REQUEST),
    _t(C.T_HOLD_SET, HoldSet, Kind.REQUEST),
    _t(C.T_HOLD_LIST, HoldList, Kind.REQUEST),
    _t(C.T_CERT_REVOKE, CertRevoke, Kind.REQUEST),
    _t(C.T_CERT_LIST, CertList, Kind.REQUEST),
    _t(C.T_S3_KEY_CREATE, S3KeyCreate, Kind.REQUEST, optional=("request_id",)),
    _t(C.T_S3_KEY_LIST, S3KeyList, Kind.REQUEST),
    _t(C.T_S3_KEY_REVOKE, S3KeyRevoke, Kind.REQUEST),
    _t(C.T_CATALOG_PUSH, CatalogPush, Kind.REQUEST),
    _t(C.T_CATALOG_SYNC, CatalogSync, Kind.REQUEST),
    _t(C.T_TENANT_CONFIRM, TenantConfirm, Kind.REQUEST),
    _t(C.T_TENANT_ABANDON, TenantAbandon, Kind.REQUEST),
    _t(C.T_TENANT_VOTE, TenantVote, Kind.REQUEST),
)

_BY_CODE: Final = {t.code: t for t in MESSAGE_TYPES}
_BY_CLASS: Final = {t.cls: t for t in MESSAGE_TYPES}
assert len(_BY_CODE) == len(_BY_CLASS) == len(MESSAGE_TYPES), "codes and classes are unique"
assert all(0 < t.code <= 0xFF for t in MESSAGE_TYPES)
# The state machine reads ``rid`` from every message except the connection-level ones.
assert all(
    t.fields[:1] == ("rid",) for t in MESSAGE_TYPES if t.kind not in (Kind.HELLO, Kind.GOODBYE)
)

# What opens a request declares the body of its answer (``Request[reply type]``).
assert all(
    issubclass(t.cls, Request) == (t.kind in (Kind.REQUEST, Kind.UPLOAD, Kind.DOWNLOAD))
    for t in MESSAGE_TYPES
)


def message_type(msg: Message) -> MessageType:
    """The registry line of *msg*; :class:`KeyError` for an unregistered class."""
    return _BY_CLASS[type(msg)]


def _values(msg: Message) -> tuple[int, list[object]]:
    t = _BY_CLASS[type(msg)]
    # attrgetter of one name answers the value itself, of more a tuple.
    values = [t.values(msg)] if t.most == 1 else list(t.values(msg))
    if t.optional:
        # Trailing optional fields at their default stay off the wire (see MessageType).
        for _, default in reversed(t.optional):
            if values[-1] != default:
                break
            values.pop()
    return t.code, values


def bulk_values(msg: Message) -> tuple[int, list[object]] | None:
    """``(frame type code, field values)`` of a message worth framing without ``packb``'s
    copies (:func:`~._frames.encode_bulk_frame`): a Replicate carrying a chunk payload of
    ``BULK_BYTES`` or more. None for any other message."""
    if type(msg) is not Replicate or not any(len(c[2]) >= BULK_BYTES for c in msg.chunks):
        return None
    return _values(msg)


def encode_body(msg: Message) -> tuple[int, bytes]:
    """``(frame type code, msgpack body)`` of *msg*."""
    code, values = _values(msg)
    return code, packb(values)


def frame_size(msg: Message) -> int:
    """Bytes *msg* takes on the wire as one frame, header included: the one way bytes are
    counted by whoever reports traffic (repair rounds). Counted without encoding the
    message's large byte strings (a chunk fetched in a rebuild: a megabyte each)."""
    return C.HEADER_SIZE + packed_size(_values(msg)[1])


def packed_size(obj: object) -> int:
    """``len(packb(obj))``, without copying byte strings: their size is their length plus
    msgpack's header; maps and arrays of up to 16 entries are summed entry by entry, anything
    else is measured by encoding it."""
    if isinstance(obj, (bytes, bytearray)):
        n = len(obj)
        return n + (2 if n < 0x100 else 3 if n < 0x10000 else 5)
    if isinstance(obj, dict) and len(obj) <= 16:
        return (1 if len(obj) < 16 else 3) + sum(
            packed_size(k) + packed_size(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and len(obj) <= 16:
        return (1 if len(obj) < 16 else 3) + sum(packed_size(v) for v in obj)
    return len(packb(obj))


def decode_body(code: int, body: bytes | memoryview) -> tuple[Message, Kind]:
    """The message a frame of type *code* carries, and its kind; :class:`ProtocolError` if the
    code is unknown or the body is not a well-formed message of that type."""
    t = _BY_CODE.get(code)
    if t is None:
        raise ProtocolError(f"unknown frame type 0x{code:02x}")
    try:
        fields = unpackb(body)
    except PackError as exc:
        raise ProtocolError(f"{t.cls.__name__} frame: {exc}") from None
    if type(fields) is not list or not t.required <= len(fields) <= t.most:
        count = (f"{len(t.fields)}" if not t.optional
                 else f"{t.required} to {len(t.fields)}")
        raise ProtocolError(f"{t.cls.__name__} frame: body must be an array of {count} fields")
    try:
        return t.cls(*fields), t.kind
    except InvalidRequest as exc:
        raise ProtocolError(f"malformed {t.cls.__name__}: {exc}") from None
