"""The bodies of the replies: one ``TypedDict`` per kind of success answer, beside the requests.

Each request class names the body of its ``Reply`` (``GetStart.info`` for a get) as its type
parameter — ``StatRequest(Request[VersionInfo])`` — so a caller of ``call(request)`` gets the
reply's type from the request, and :func:`decode_reply` checks a received body against it:
every required field present with its type, optional ones (``NotRequired``) typed when present.
A malformed body is a :class:`~hdsd.ProtocolError` naming the field. Keys not listed are kept
and ignored (later versions add some), so this is a typing and validation layer over the same
msgpack maps: the bytes on the wire do not change. ``docs/wire.md`` lists these fields per
request; ``tests/wire/test_replies.py`` holds the two together.

Fields older nodes may leave out are ``NotRequired``; the readers keep their defaults for them.

No ``from __future__ import annotations`` here: Python 3.11 recognises ``NotRequired`` in a
TypedDict only when its annotations are evaluated.
"""

import functools
import types
from collections.abc import Callable
from typing import (
    Any,
    Literal,
    NotRequired,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from .._errors import ProtocolError

__all__ = [
    "AuditShipped",
    "BucketCreated",
    "BucketRow",
    "BucketsListed",
    "BucketsPage",
    "BucketsPart",
    "CatalogPushed",
    "CatalogState",
    "CertRevoked",
    "CertRow",
    "CertsRevoked",
    "ChunkPayload",
    "ChunkSizes",
    "Deleted",
    "Empty",
    "GetInfo",
    "GotMany",
    "HoldRow",
    "HoldSetReply",
    "HoldsHeld",
    "LayoutState",
    "LeafDiffReply",
    "ListPage",
    "ListPart",
    "MaintenanceStarted",
    "NodeStatus",
    "S3KeyCreated",
    "S3KeyRevoked",
    "S3KeyRow",
    "S3KeysListed",
    "SiteModeSet",
    "TenantCreated",
    "TenantCreation",
    "TenantRow",
    "TenantShredded",
    "TenantVoted",
    "TenantsListed",
    "TreeHashes",
    "VersionInfo",
    "Versions",
    "VersionsHeld",
    "decode_reply",
]


# -- client ↔ node -------------------------------------------------------------------------------
class VersionInfo(TypedDict):
    """What every read shows of a version (PutStart, StatRequest, DeleteRequest reply; the
    entries of listings and version lists)."""

    bucket: str
    key: str
    version: str  # the version id
    hlc: int
    node: str
    size: int
    content_hash: str  # hex
    deleted: bool  # a tombstone
    metadata: NotRequired[dict[str, str]]  # absent: none (the client library reads it so)
    replayed: NotRequired[bool]  # a retry of a request already applied (put: only when true)


class Deleted(VersionInfo):
    """A DeleteRequest's reply: the delete marker written, or — for a purge (a ``version``
    given) — the version deleted for good, with the purge record's own version id."""

    purge_record: NotRequired[str]


class GetInfo(VersionInfo):
    """``GetStart.info``: the version, and the byte range ``[start, end)`` that follows."""

    start: int
    end: int


class GotMany(TypedDict):
    """``GetMany``'s ``GetStart.info``: one entry per item served, in the order asked — a
    prefix of the items when they did not all fit one answer (ask again for the rest). An
    entry is ``{"version": str, "size": int, "content_hash": str}`` for a version whose
    ``size`` bytes follow in the body, or ``{"error": code, "message": str}`` for an item
    refused (nothing of it follows). The body is the served versions' bytes back to back;
    Data frame boundaries mean nothing. Asked with ``sha256``, each served entry also has
    ``"sha256"`` (hex) and no body follows."""

    items: list[dict[str, Any]]


class ListPage(TypedDict):
    entries: list[VersionInfo]
    next: str | None  # pass back as ``after``; None on the last page


class Versions(TypedDict):
    versions: list[VersionInfo]  # oldest first


class BucketsPage(TypedDict):
    tenant: str
    buckets: list[str]
    next: str | None


#: ``StatusRequest`` and ``PeerStatusRequest``: a node's status, the document ``hdsd status
#: --json`` prints (its own, versioned reference: ``docs/operations.md``), free-form here.
NodeStatus = dict[str, Any]


class SiteModeSet(TypedDict):
    node: str
    write_policy: str  # now in force
    mode: str
    reason: str
    by: str
    since: float


class MaintenanceStarted(TypedDict):
    node: str
    task: str
    run: int  # the run that will include this request: wait for runs_completed >= run
    running: bool
    runs_completed: int
    runs_requested: int
    progress: dict[str, Any]
    last: Any


class LayoutState(TypedDict):
    """``LayoutPush``: the receiver's layout record and migration state."""

    node: str
    version: int
    phase: str
    digest: str
    synced: bool
    record: dict[str, Any]
    adopted: bool  # this push was news to the receiver


# -- tenant administration -----------------------------------------------------------------------
class Applied(TypedDict):
    """A catalog change: the nodes that applied it before the reply, and those that will at
    their next catalog sync."""

    applied_on: list[str]
    pending: list[str]


class TenantCreation(Applied):
    """A tenant creation's state (``TenantConfirm``, ``TenantAbandon``)."""

    tenant: str
    state: str  # confirmed, pending, abandoning, abandoned
    creation: str  # hex
    epoch: int
    origin: str
    plan: str
    quota_bytes: int
    acked: list[str]
    waiting: dict[str, str]  # node: why it did not answer
    created: NotRequired[bool]


class TenantCreated(Applied):
    """``TenantCreate``: a new tenant's creation (as :class:`TenantCreation`), or, for a
    tenant that exists, its new quota (no ``creation``, ``acked``, ``waiting``)."""

    tenant: str
    created: bool
    state: str
    plan: str
    quota_bytes: int
    creation: NotRequired[str]
    epoch: NotRequired[int]
    origin: NotRequired[str]
    acked: NotRequired[list[str]]
    waiting: NotRequired[dict[str, str]]


class TenantRow(TypedDict):
    tenant: str
    state: str  # live, shredded, pending, abandoning
    plan: str
    quota_bytes: int
    usage_bytes: int
    created_ms: int
    shredded_ms: int | None
    buckets: int  # created or holding versions in the site
    buckets_incomplete: bool  # a node of the site did not answer
    creation: str
    origin: str


class TenantsListed(TypedDict):
    node: str
    tenants: list[TenantRow]


class TenantShredded(Applied):
    tenant: str
    shredded: bool


class BucketCreated(Applied):
    tenant: str
    bucket: str
    retention_days: int


class BucketRow(TypedDict):
    tenant: str
    bucket: str
    retention_days: int
    created_ms: int
    holds: list[str]


class BucketsListed(TypedDict):
    buckets: list[BucketRow]


class HoldSetReply(Applied):
    tenant: str
    bucket: str
    key: str
    held: bool
    by: str


class HoldRow(TypedDict):
    tenant: str
    bucket: str
    key: str
    by: str
    set_ms: int


class HoldsHeld(TypedDict):
    holds: list[HoldRow]  # sorted


class CertRevoked(Applied):
    serial: str
    kind: str
    tenant: str
    name: str
    already_revoked: bool


class CertRow(TypedDict):
    serial: str
    kind: str
    tenant: str
    name: str
    role: str
    not_after_ms: int | None
    revoked_ms: int
    by: str
    reason: str


class CertsRevoked(TypedDict):
    node: str
    revoked: list[CertRow]


class S3KeyCreated(Applied):
    access_key_id: str
    secret_access_key: str  # sent only in replies to this request, stored only wrapped
    tenant: str
    role: str
    replayed: NotRequired[bool]  # a retry of a creation already made: the same key


class S3KeyRow(TypedDict):
    access_key_id: str
    tenant: str
    role: str
    state: Literal["active", "revoked"]
    created_ms: int
    by: str
    revoked_ms: int | None
    revoked_by: str | None


class S3KeysListed(TypedDict):
    node: str
    keys: list[S3KeyRow]  # never a secret


class S3KeyRevoked(Applied):
    access_key_id: str
    tenant: str
    already_revoked: bool


# -- node ↔ node ---------------------------------------------------------------------------------
class Empty(TypedDict):
    """``Replicate``: the records are durable (nothing else to say)."""


class VersionsHeld(TypedDict):
    """``FetchVersions``: every version of the key the node holds, as stored records (maps of
    ``hdsd.store.Version.to_wire``, checked by ``Version.from_wire``)."""

    versions: list[dict[str, Any]]


class ChunkPayload(TypedDict):
    payload: bytes  # the sealed chunk record, as stored


class ChunkSizes(TypedDict):
    """``FetchChunks``' ``GetStart.info``: the sizes of the sealed records that follow as the
    download's body, one per chunk asked, in order — a prefix of the chunks asked when they
    did not all fit one download (ask again for the rest)."""

    sizes: list[int]


class ListPart(TypedDict):
    versions: list[dict[str, Any]]  # stored records, without chunk ids or inline payloads
    more: NotRequired[bool]  # the part stopped early


class BucketsPart(TypedDict):
    buckets: list[str]
    more: NotRequired[bool]


class TreeHashes(TypedDict):
    hashes: list[bytes]  # 16 bytes each, one per index asked
    count: int  # versions the tree holds


class LeafDiffReply(TypedDict):
    versions: list[dict[str, Any]]  # the receiver's stored records the sender lacks
    wanted: list[bytes]  # the sender's digests the receiver lacks
    more: NotRequired[bool]  # versions left for the next request


class AuditShipped(TypedDict):
    seq: int  # the tail of the receiver's copy
    hash: bytes


class CatalogPushed(TypedDict):
    changed: int


class CatalogState(TypedDict):
    digest: bytes
    entries: list[dict[str, Any]]  # every entry when the digests differ, else none
    usage: NotRequired[dict[str, int]]  # bytes per tenant held by the receiver


class TenantVoted(TypedDict):
    state: str  # of the tenant entry the voter holds after voting


# -- decoding ------------------------------------------------------------------------------------
_Check = Callable[[str, object], None]


def _fail(path: str, expected: str, value: object) -> ProtocolError:
    return ProtocolError(f"{path}: expected {expected}, got {type(value).__name__}")


def _exact(tp: type, name: str) -> _Check:
    def check(path: str, value: object) -> None:
        # exact types: a bool is not an int here, as in the request checks (hdsd.wire._fields)
        if type(value) is not tp:
            raise _fail(path, name, value)
    return check


def _number(path: str, value: object) -> None:
    if type(value) not in (int, float):
        raise _fail(path, "number", value)


def _any(path: str, value: object) -> None:
    pass


def _checker(tp: Any) -> _Check:
    """The check of one field's annotation (the few shapes reply bodies use)."""
    if tp is Any:
        return _any
    if tp is float:
        return _number
    if tp in (str, int, bool, bytes):
        return _exact(tp, tp.__name__)
    if tp is type(None):
        return _exact(type(None), "nil")
    if is_typeddict(tp):
        return _typed_dict(tp)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        options = [_checker(a) for a in args]

        def one_of(path: str, value: object) -> None:
            for option in options:
                try:
                    option(path, value)
                    return
                except ProtocolError:
                    pass
            raise _fail(path, " or ".join(getattr(a, "__name__", str(a)) for a in args), value)
        return one_of
    if origin is Literal:
        def literal(path: str, value: object) -> None:
            if value not in args:
                raise ProtocolError(f"{path}: {value!r} is not one of {', '.join(args)}")
        return literal
    if origin is list:
        item = _checker(args[0])

        def list_of(path: str, value: object) -> None:
            if type(value) is not list:
                raise _fail(path, "array", value)
            for i, v in enumerate(value):
                item(f"{path}[{i}]", v)
        return list_of
    if origin is dict:
        key, val = _checker(args[0]), _checker(args[1])

        def map_of(path: str, value: object) -> None:
            if type(value) is not dict:
                raise _fail(path, "map", value)
            for k, v in value.items():
                key(f"{path} key", k)
                val(f"{path}[{k!r}]", v)
        return map_of
    raise TypeError(f"no reply check for {tp!r}")  # a new shape: add it here


@functools.cache
def _typed_dict(td: type) -> _Check:
    hints = get_type_hints(td)
    required: frozenset[str] = td.__required_keys__  # type: ignore[attr-defined]
    # A field of an exact type (str, int, bool, bytes: most of them) is checked in the loop,
    # not by a call of its check: a put's reply has eight, and every reply is checked.
    fields = [(name, tp if tp in (str, int, bool, bytes) else None, _checker(tp), name in required)
              for name, tp in hints.items()]

    def check(path: str, value: object) -> None:
        if type(value) is not dict:
            raise _fail(path, "map", value)
        for name, exact, field_check, needed in fields:
            if name in value:
                if exact is None or type(value[name]) is not exact:
                    field_check(f"{path}.{name}" if path else name, value[name])
            elif needed:
                raise ProtocolError(f"{path + '.' if path else ''}{name}: missing")
    return check


def decode_reply(tp: Any, body: dict[str, Any], what: str) -> Any:
    """*body* (a ``Reply.body`` or ``GetStart.info``, already a map with ``str`` keys) checked
    against *tp*, the reply type of the request *what*; the same map, now typed.
    :class:`ProtocolError` naming the field if it does not match."""
    if tp is NodeStatus:
        return body
    try:
        _typed_dict(tp)("", body)
    except ProtocolError as exc:
        raise ProtocolError(f"malformed reply to {what}: {exc.message}") from None
    return body
