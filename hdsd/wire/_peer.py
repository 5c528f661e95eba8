"""Messages between nodes (replication, repair reads) and cluster admin requests.

On a node-to-node connection the node that dialed is the CLIENT; every message here is a plain
REQUEST answered by ``Reply`` or ``ErrorReply``. Each carries the sender's ``layout`` id: nodes
that disagree on the cluster layout refuse to mix (``ErrorReply`` code ``layout_mismatch``).

Records travel in msgpack-native shapes so the wire layer stays ignorant of the store: a chunk
is ``[tenant, chunk_id, payload]``, a version is the map of ``Version.to_wire()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from .._errors import InvalidRequest
from . import _constants as C
from . import _fields as F
from ._messages import Request
from ._replies import (
    AuditShipped,
    BucketsPart,
    ChunkPayload,
    ChunkSizes,
    Empty,
    LayoutState,
    ListPart,
    NodeStatus,
    SiteModeSet,
    VersionsHeld,
)

__all__ = [
    "SITE_MODES",
    "AuditShip",
    "FetchChunk",
    "FetchChunks",
    "FetchVersions",
    "LayoutPush",
    "ListBucketsPeer",
    "ListPeer",
    "PeerStatusRequest",
    "Replicate",
    "SiteModeName",
    "SiteModeRequest",
]

_MAX_LAYOUT_CHARS = 64
SiteModeName = Literal["normal", "degraded"]
SITE_MODES: tuple[SiteModeName, ...] = get_args(SiteModeName)


def _check_layout(value: object) -> None:
    F.check_str("layout", value, max_chars=_MAX_LAYOUT_CHARS, allow_empty=False)


def _check_chunk(item: Any) -> None:
    if type(item) is not list or len(item) != 3:
        raise InvalidRequest("chunks: each item must be [tenant, chunk_id, payload]")
    F.check_str("chunks.tenant", item[0], max_bytes=C.MAX_NAME_BYTES, allow_empty=False)
    F.check_bytes("chunks.chunk_id", item[1], exact=32)
    F.check_bytes("chunks.payload", item[2])


@dataclass(frozen=True, slots=True)
class Replicate(Request[Empty]):
    """Store these chunk and version records durably; Reply once they are fdatasync'd.

    Chunks come before the versions that name them (a receiver commits them in one batch, so
    a version never becomes visible without its content). ``hint`` marks a replay of records
    the sender kept while this node was unreachable. A version map is read by its keys, others
    ignored: a coordinator adds its sealed record's (``hdsd.store.ReplicatedVersion``), which
    a node that predates them reads as the clear version.
    """

    rid: int
    layout: str
    chunks: list[Any]
    versions: list[Any]
    hint: bool

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _check_layout(self.layout)
        if type(self.chunks) is not list or type(self.versions) is not list:
            raise InvalidRequest("chunks and versions must be lists")
        for item in self.chunks:
            _check_chunk(item)
        for v in self.versions:
            F.check_map("versions", v)
        F.check_bool("hint", self.hint)


@dataclass(frozen=True, slots=True)
class FetchVersions(Request[VersionsHeld]):
    """Every version of one key this node holds (for reads and read repair)."""

    rid: int
    layout: str
    tenant: str
    bucket: str
    key: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _check_layout(self.layout)
        F.check_str("tenant", self.tenant, max_bytes=C.MAX_NAME_BYTES, allow_empty=False)
        F.check_bucket(self.bucket)
        F.check_key(self.key)


@dataclass(frozen=True, slots=True)
class FetchChunk(Request[ChunkPayload]):
    """The sealed payload of one chunk (Reply body ``{"payload": bytes}``)."""

    rid: int
    layout: str
    tenant: str
    chunk_id: bytes

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _check_layout(self.layout)
        F.check_str("tenant", self.tenant, max_bytes=C.MAX_NAME_BYTES, allow_empty=False)
        F.check_bytes("chunk_id", self.chunk_id, exact=32)


@dataclass(frozen=True, slots=True)
class FetchChunks(Request[ChunkSizes]):
    """The sealed payloads of many chunks as the body of a download (a rebuild's bulk copy):
    ``GetStart`` with ``{"sizes": [...]}``, then the records back to back in Data frames —
    each one frame when it fits, so the receiver takes it as it comes — then ``End``. A
    FetchChunk per chunk costs a request, a msgpack map and two more copies of the payload.

    ``chunks`` is a list of ``[tenant, chunk_id]`` (at most :data:`MAX_FETCH_CHUNKS`). The
    sender may stop after a prefix (its ``sizes`` say how many: about 8 MiB, or one chunk),
    the receiver asks again for the rest; a chunk the sender lacks fails the whole request
    (ErrorReply ``not_found``) before ``GetStart``, as FetchChunk would."""

    rid: int
    layout: str
    chunks: list[Any]

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _check_layout(self.layout)
        if type(self.chunks) is not list or not 1 <= len(self.chunks) <= C.MAX_FETCH_CHUNKS:
            raise InvalidRequest(f"chunks: a list of 1 to {C.MAX_FETCH_CHUNKS} items")
        for item in self.chunks:
            if type(item) is not list or len(item) != 2:
                raise InvalidRequest("chunks: each item must be [tenant, chunk_id]")
            F.check_str("chunks.tenant", item[0], max_bytes=C.MAX_NAME_BYTES,
                        allow_empty=False)
            F.check_bytes("chunks.chunk_id", item[1], exact=32)


@dataclass(frozen=True, slots=True)
class ListPeer(Request[ListPart]):
    """One node's part of a listing: the versions it holds under ``prefix`` strictly after key
    ``after`` — every version if ``versions``, else the current one of each key, delete markers
    included (the coordinator merges the nodes of a site and drops deleted keys itself).

    Reply body ``{"versions": [...], "more": bool}``: at most ``limit`` versions and about
    1 MiB of them, without chunk ids or inline payloads; ``more`` when it stopped early."""

    rid: int
    layout: str
    tenant: str
    bucket: str
    prefix: str
    after: str
    limit: int
    versions: bool

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _check_layout(self.layout)
        F.check_str("tenant", self.tenant, max_bytes=C.MAX_NAME_BYTES, allow_empty=False)
        F.check_bucket(self.bucket)
        F.check_key(self.prefix, "prefix", allow_empty=True)
        F.check_str("after", self.after, max_bytes=C.MAX_LIST_CURSOR_BYTES)
        F.check_int("limit", self.limit, 1, C.MAX_LIST_LIMIT)
        F.check_bool("versions", self.versions)


@dataclass(frozen=True, slots=True)
class PeerStatusRequest(Request[NodeStatus]):
    """A peer's health and replication backlog, for ``hdsd status``."""

    rid: int
    layout: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _check_layout(self.layout)


@dataclass(frozen=True, slots=True)
class SiteModeRequest(Request[SiteModeSet]):
    """Admin: switch a site to ``degraded`` (accept writes alone, keep hints) or back to
    ``normal``; sent by ``hdsd site degrade|restore`` to every node of the site."""

    rid: int
    site: str
    mode: str
    reason: str

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_str("site", self.site, max_bytes=C.MAX_NAME_BYTES, allow_empty=False)
        if self.mode not in SITE_MODES:
            raise InvalidRequest(f"mode: must be one of {', '.join(SITE_MODES)}")
        F.check_str("reason", self.reason, max_bytes=C.MAX_TEXT_BYTES)


@dataclass(frozen=True, slots=True)
class AuditShip(Request[AuditShipped]):
    """Keep these audit records of node ``origin`` (their bodies, in order, right after the
    record ``prev_seq`` whose chain hash is ``prev_hash``); the receiver recomputes the chain and
    checks the checkpoints with ``verify_key``. Reply ``{"seq": int, "hash": bytes}``: the tail
    of the receiver's copy. Refused with ``audit_chain_broken`` if the chain does not continue.
    """

    rid: int
    layout: str
    origin: str
    verify_key: bytes
    prev_seq: int
    prev_hash: bytes
    records: list[bytes]

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _check_layout(self.layout)
        F.check_str("origin", self.origin, max_bytes=C.MAX_NAME_BYTES, allow_empty=False)
        F.check_bytes("verify_key", self.verify_key, exact=32)
        F.check_int("prev_seq", self.prev_seq, 0, C.MAX_U63)
        F.check_bytes("prev_hash", self.prev_hash, exact=32)
        if type(self.records) is not list or len(self.records) > C.MAX_AUDIT_BATCH:
            raise InvalidRequest(f"records: a list of at most {C.MAX_AUDIT_BATCH} items")
        for body in self.records:
            F.check_bytes("records", body)


@dataclass(frozen=True, slots=True)
class ListBucketsPeer(Request[BucketsPart]):
    """One node's part of a bucket listing: the buckets of ``tenant`` it holds versions of,
    after ``after``, ascending (Reply body ``{"buckets": [str], "more": bool}``: ``more`` when
    it stopped early, at about 1 MiB of names)."""

    rid: int
    layout: str
    tenant: str
    after: str = ""

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        _check_layout(self.layout)
        F.check_str("tenant", self.tenant, max_bytes=C.MAX_NAME_BYTES, allow_empty=False)
        F.check_str("after", self.after, max_chars=C.MAX_BUCKET_CHARS, allow_empty=True)



@dataclass(frozen=True, slots=True)
class LayoutPush(Request[LayoutState]):
    """A layout record (its map, see ``hdsd.cluster.LayoutRecord``): adopt it if newer. Sent by
    ``hdsd layout apply`` (an operator) and between nodes; a node also pushes its own record to
    learn a peer's (the reply carries the receiver's record and migration state:
    ``{"version", "phase", "digest", "synced", "record"}``)."""

    rid: int
    record: dict[str, Any]

    def __post_init__(self) -> None:
        F.check_rid(self.rid)
        F.check_map("record", self.record)
