"""The store against a dict model: puts (inline and chunked), tombstones, idempotent rewrites,
listings with pagination, version lookups, and reopen."""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hdsd import NotFound
from hdsd.store import ChunkRecord, Store, Version
from tests.helpers.sealing import SEALING

from ._util import chunked_put, inline_version, tombstone

TENANTS = ["acme", "beta"]
BUCKETS = ["b1", "b2", "img"]
KEYS = ["a", "a/b", "a/c", "ab", "b", "é", "z\u4e2d"]  # keys are never empty
NODES = ["n1", "n2"]
HLCS = st.sampled_from([1, 2, 3, 50, 1 << 40, (1 << 63) + 5, (1 << 64) - 1])
DATA = st.binary(max_size=64)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="hdsd-store-")
        # Tiny segments so rotation happens often.
        self.store = Store.open(self.dir, segment_bytes=2048, sealing=SEALING)
        self.versions: dict[tuple[str, str, str], dict[tuple[int, str], Version]] = {}
        self.chunks: dict[tuple[str, bytes], bytes] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _commit(self, records: list[ChunkRecord | Version]) -> None:
        self.store.commit_sync(records)
        for r in records:
            if isinstance(r, ChunkRecord):
                self.chunks.setdefault((r.tenant, r.chunk_id), r.payload)
            else:
                # Union of versions; a second copy of the same (hlc, node) changes nothing.
                self.versions.setdefault((r.tenant, r.bucket, r.key), {}).setdefault(
                    r.order, r)

    def _known(self, tenant: str, bucket: str, key: str, hlc: int, node: str) -> Version | None:
        return self.versions.get((tenant, bucket, key), {}).get((hlc, node))

    @rule(tenant=st.sampled_from(TENANTS), bucket=st.sampled_from(BUCKETS),
          key=st.sampled_from(KEYS), hlc=HLCS, node=st.sampled_from(NODES), data=DATA,
          rid=st.binary(min_size=0, max_size=4))
    def put_inline(self, tenant: str, bucket: str, key: str, hlc: int, node: str, data: bytes,
                   rid: bytes) -> None:
        v = self._known(tenant, bucket, key, hlc, node) or inline_version(
            tenant, bucket, key, hlc, node, data, request_id=rid)
        self._commit([v])

    @rule(tenant=st.sampled_from(TENANTS), bucket=st.sampled_from(BUCKETS),
          key=st.sampled_from(KEYS), hlc=HLCS, node=st.sampled_from(NODES),
          parts=st.lists(DATA, min_size=1, max_size=3))
    def put_chunked(self, tenant: str, bucket: str, key: str, hlc: int, node: str,
                    parts: list[bytes]) -> None:
        records = chunked_put(tenant, bucket, key, hlc, node, parts)
        known = self._known(tenant, bucket, key, hlc, node)
        if known is not None:
            records[-1] = known
        self._commit(records)

    @rule(tenant=st.sampled_from(TENANTS), bucket=st.sampled_from(BUCKETS),
          key=st.sampled_from(KEYS), hlc=HLCS, node=st.sampled_from(NODES))
    def delete(self, tenant: str, bucket: str, key: str, hlc: int, node: str) -> None:
        v = self._known(tenant, bucket, key, hlc, node) or tombstone(tenant, bucket, key, hlc,
                                                                    node)
        self._commit([v])

    @precondition(lambda self: bool(self.chunks))
    @rule(data=st.data())
    def rewrite_existing_chunk(self, data: st.DataObject) -> None:
        (tenant, cid), payload = data.draw(st.sampled_from(sorted(self.chunks.items())))
        before = self.store.statistics().bytes_written
        self._commit([ChunkRecord(tenant, cid, payload)])
        assert self.store.statistics().bytes_written == before  # skipped: already durable

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = Store.open(self.dir, segment_bytes=2048, sealing=SEALING)

    @rule(tenant=st.sampled_from(TENANTS), bucket=st.sampled_from(BUCKETS),
          prefix=st.sampled_from(["", "a", "a/", "z", "é", "q"]),
          limit=st.integers(1, 4), include_deleted=st.booleans())
    def list_current_paginated(self, tenant: str, bucket: str, prefix: str, limit: int,
                               include_deleted: bool) -> None:
        expected = []
        for (t, b, k), vs in sorted(self.versions.items()):
            if t == tenant and b == bucket and k.startswith(prefix):
                cur = vs[max(vs)]
                if include_deleted or not cur.tombstone:
                    expected.append(cur)
        got: list[Version] = []
        after = ""
        while True:
            page = self.store.list_current(tenant, bucket, prefix=prefix, after=after,
                                           limit=limit, include_deleted=include_deleted)
            assert len(page) <= limit
            got.extend(page)
            if len(page) < limit:
                break
            after = page[-1].key
        assert got == expected

    @rule(tenant=st.sampled_from(TENANTS), bucket=st.sampled_from(BUCKETS),
          prefix=st.sampled_from(["", "a", "é"]), limit=st.integers(1, 5))
    def list_versions_paginated(self, tenant: str, bucket: str, prefix: str,
                                limit: int) -> None:
        expected = [v for (t, b, k), vs in sorted(self.versions.items())
                    if t == tenant and b == bucket and k.startswith(prefix)
                    for _, v in sorted(vs.items())]
        got: list[Version] = []
        after: tuple[str, int, str] | None = None
        while True:
            page = self.store.list_versions(tenant, bucket, prefix=prefix, after=after,
                                            limit=limit)
            got.extend(page)
            if len(page) < limit:
                break
            after = (page[-1].key, page[-1].hlc, page[-1].node)
        assert got == expected

    @invariant()
    def keys_match(self) -> None:
        for (t, b, k), vs in self.versions.items():
            ordered = [vs[o] for o in sorted(vs)]
            assert self.store.versions(t, b, k) == ordered
            assert self.store.current(t, b, k) == ordered[-1]
            v = ordered[0]
            assert self.store.get_version(t, b, k, v.hlc, v.node) == v
        assert self.store.current("acme", "nope", "a") is None

    @invariant()
    def chunks_match(self) -> None:
        for (tenant, cid), payload in self.chunks.items():
            assert self.store.has_chunk(tenant, cid)
            assert self.store.read_chunk(tenant, cid) == payload
            other = "beta" if tenant == "acme" else "acme"
            if (other, cid) not in self.chunks:  # tenants never see each other's chunks
                assert not self.store.has_chunk(other, cid)
                try:
                    self.store.read_chunk(other, cid)
                except NotFound:
                    pass
                else:
                    raise AssertionError("read another tenant's chunk")

    @invariant()
    def summaries_match(self) -> None:
        for tenant in TENANTS:
            assert self.store.buckets(tenant) == sorted(
                {b for (t, b, _) in self.versions if t == tenant})
        hlcs = [o[0] for vs in self.versions.values() for o in vs]
        assert self.store.max_hlc() == max(hlcs, default=0)
        every = [v for vs in self.versions.values() for v in vs.values()]
        assert sorted(self.store.iter_versions(), key=_ident) == sorted(every, key=_ident)
        for v in every:
            if v.request_id:
                found = self.store.find_request(v.tenant, v.request_id)
                assert found is not None and found.request_id == v.request_id


def _ident(v: Version) -> tuple[str, str, str, int, str]:
    return (v.tenant, v.bucket, v.key, v.hlc, v.node)


StoreMachine.TestCase.settings = settings(stateful_step_count=30)
TestStoreMachine = StoreMachine.TestCase
