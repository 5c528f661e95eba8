"""Hypothesis strategies: one per wire message type, all within the documented limits."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from hdsd import wire
from hdsd.wire import _constants as C

rids = st.integers(0, C.MAX_RID)
request_ids = st.binary(min_size=C.REQUEST_ID_SIZE, max_size=C.REQUEST_ID_SIZE)
buckets = st.text(min_size=1, max_size=C.MAX_BUCKET_CHARS)
# At most 4 UTF-8 bytes per character: 256 characters always fit in 1024 bytes.
keys = st.text(min_size=1, max_size=C.MAX_KEY_BYTES // 4)
prefixes = st.text(max_size=C.MAX_KEY_BYTES // 4)
names = st.text(max_size=C.MAX_NAME_BYTES // 4)
codes = st.text(min_size=1, max_size=C.MAX_CODE_CHARS)
texts = st.text(max_size=200)
versions = st.none() | st.text(min_size=1, max_size=C.MAX_VERSION_ID_BYTES // 4)
offsets = st.none() | st.integers(0, C.MAX_U63)
layouts = st.text(min_size=1, max_size=64)
tenants = st.text(min_size=1, max_size=C.MAX_NAME_BYTES // 4)
chunk_ids = st.binary(min_size=32, max_size=32)
metadata = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=8)

# Free-form msgpack maps as they come back from the decoder: lists, never tuples; no NaN
# (it is not equal to itself); integers in msgpack's range.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=30)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
free_maps: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=16), _values, max_size=6
)


@st.composite
def _get_requests(draw: st.DrawFn) -> wire.GetRequest:
    start, end = draw(offsets), draw(offsets)
    if start is not None and end is not None and start > end:
        start, end = end, start
    return wire.GetRequest(draw(rids), draw(buckets), draw(keys), draw(versions), start, end)


STRATEGIES: dict[type[wire.Message], st.SearchStrategy[Any]] = {
    wire.Hello: st.builds(
        wire.Hello, st.just(C.PROTOCOL_VERSION), names, names, st.integers(0, C.MAX_WINDOW)
    ),
    wire.Goodbye: st.builds(wire.Goodbye, codes, texts),
    wire.PutStart: st.builds(
        wire.PutStart,
        rids,
        request_ids,
        buckets,
        keys,
        offsets,
        metadata,
        st.none() | st.text(min_size=1, max_size=C.MAX_POLICY_CHARS),
        st.booleans(),
    ),
    wire.Data: st.builds(wire.Data, rids, st.binary(max_size=2048)),
    wire.End: st.builds(wire.End, rids),
    wire.Credit: st.builds(wire.Credit, rids, st.integers(1, C.MAX_CREDIT_GRANT)),
    wire.Cancel: st.builds(wire.Cancel, rids),
    wire.GetRequest: _get_requests(),
    wire.GetStart: st.builds(wire.GetStart, rids, free_maps),
    wire.StatRequest: st.builds(wire.StatRequest, rids, buckets, keys, versions),
    wire.ListRequest: st.builds(
        wire.ListRequest,
        rids,
        buckets,
        prefixes,
        prefixes,
        st.integers(1, C.MAX_LIST_LIMIT),
        st.booleans(),
    ),
    wire.DeleteRequest: st.builds(wire.DeleteRequest, rids, request_ids, buckets, keys,
                                  st.booleans(), versions),
    wire.VersionsRequest: st.builds(wire.VersionsRequest, rids, buckets, keys),
    wire.StatusRequest: st.builds(wire.StatusRequest, rids),
    wire.ListBucketsRequest: st.builds(wire.ListBucketsRequest, rids, st.just("") | buckets),
    wire.GetMany: st.builds(wire.GetMany, rids,
                            st.lists(st.tuples(buckets, keys, versions).map(list), min_size=1,
                                     max_size=3)),
    wire.Reply: st.builds(wire.Reply, rids, free_maps),
    wire.ErrorReply: st.builds(wire.ErrorReply, rids, codes, texts),
    # node ↔ node
    wire.Replicate: st.builds(
        wire.Replicate,
        rids,
        layouts,
        st.lists(st.tuples(tenants, chunk_ids, st.binary(max_size=64)).map(list), max_size=3),
        st.lists(free_maps, max_size=2),
        st.booleans(),
    ),
    wire.FetchVersions: st.builds(wire.FetchVersions, rids, layouts, tenants, buckets, keys),
    wire.FetchChunk: st.builds(wire.FetchChunk, rids, layouts, tenants, chunk_ids),
    wire.FetchChunks: st.builds(wire.FetchChunks, rids, layouts,
                                st.lists(st.tuples(tenants, chunk_ids).map(list), min_size=1,
                                         max_size=3)),
    wire.PeerStatusRequest: st.builds(wire.PeerStatusRequest, rids, layouts),
    wire.ListPeer: st.builds(wire.ListPeer, rids, layouts, tenants, buckets, prefixes, prefixes,
                             st.integers(1, C.MAX_LIST_LIMIT), st.booleans()),
    wire.ListBucketsPeer: st.builds(wire.ListBucketsPeer, rids, layouts, tenants,
                                    st.just("") | buckets),
    wire.SiteModeRequest: st.builds(
        wire.SiteModeRequest, rids, tenants, st.sampled_from(wire.SITE_MODES), texts
    ),
    wire.TreeLevel: st.integers(0, 4).flatmap(lambda d: st.builds(
        wire.TreeLevel, rids, layouts, st.just(d),
        st.lists(st.integers(0, 16 ** d - 1), max_size=20))),
    wire.LeafDiff: st.builds(
        wire.LeafDiff, rids, layouts,
        st.lists(st.tuples(st.integers(0, 65535),
                           st.lists(st.binary(min_size=16, max_size=16), max_size=4)).map(list),
                 max_size=4)),
    wire.MaintenanceRequest: st.builds(wire.MaintenanceRequest, rids,
                                       st.sampled_from(wire.MAINTENANCE_TASKS)),
    wire.AuditShip: st.builds(
        wire.AuditShip, rids, layouts, tenants, chunk_ids, st.integers(0, C.MAX_U63), chunk_ids,
        st.lists(st.binary(min_size=1, max_size=64), max_size=4),
    ),
    # tenant administration and catalog replication
    wire.TenantCreate: st.builds(wire.TenantCreate, rids, tenants, st.integers(0, C.MAX_U63),
                                 st.sampled_from(["", "standard", "backup"])),
    wire.TenantList: st.builds(wire.TenantList, rids),
    wire.TenantShred: st.builds(wire.TenantShred, rids, tenants, tenants),
    wire.BucketCreate: st.builds(wire.BucketCreate, rids, tenants, buckets,
                                 st.integers(0, 36500)),
    wire.BucketList: st.builds(wire.BucketList, rids, names),
    wire.HoldSet: st.builds(wire.HoldSet, rids, tenants, buckets, keys, st.booleans()),
    wire.HoldList: st.one_of(st.builds(wire.HoldList, rids, tenants, buckets),
                             st.builds(wire.HoldList, rids, names, st.just(""))),
    wire.CertRevoke: st.builds(wire.CertRevoke, rids, st.from_regex(r"[1-9a-f][0-9a-f]{0,39}",
                                                                     fullmatch=True),
                               st.binary(max_size=64), st.text(max_size=20)),
    wire.CertList: st.builds(wire.CertList, rids, names),
    wire.LayoutPush: st.builds(wire.LayoutPush, rids, free_maps),
    wire.S3KeyCreate: st.builds(wire.S3KeyCreate, rids, tenants,
                                st.sampled_from(["admin", "writer", "reader", "auditor"]),
                                st.just(b"") | request_ids),
    wire.S3KeyList: st.builds(wire.S3KeyList, rids, names),
    wire.S3KeyRevoke: st.builds(wire.S3KeyRevoke, rids,
                                st.from_regex(r"[A-Z0-9]{16,40}", fullmatch=True)),
    wire.CatalogPush: st.builds(wire.CatalogPush, rids, layouts, st.lists(free_maps, max_size=3)),
    wire.CatalogSync: st.builds(wire.CatalogSync, rids, layouts,
                                st.binary(min_size=32, max_size=32)),
    wire.TenantConfirm: st.builds(wire.TenantConfirm, rids, tenants,
                                  st.sampled_from([b"", b"\x01" * 16])),
    wire.TenantAbandon: st.builds(wire.TenantAbandon, rids, tenants, tenants),
    wire.TenantVote: st.builds(wire.TenantVote, rids, layouts, free_maps,
                               st.sampled_from(["create", "abandon"])),
}

messages: st.SearchStrategy[wire.Message] = st.one_of(*STRATEGIES.values())
