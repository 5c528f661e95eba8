"""Listing pages bounded by bytes: following ``next`` lists every entry exactly once, in
order, whatever the sizes, the placement of keys on nodes, and where the parts stop."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from hdsd._packing import packb
from hdsd.node._listing import (
    LIST_BYTES,
    BucketPart,
    Part,
    lean,
    merge_buckets,
    merge_page,
    take_buckets,
    take_versions,
)
from hdsd.store import Version
from hdsd.wire import MAX_FRAME, Reply
from hdsd.wire._registry import encode_body

_KEYS = st.text(alphabet="abc", min_size=1, max_size=4)
_NODES = ["n1", "n2", "n3"]


def _version(key: str, hlc: int, node: str, tombstone: bool, meta: int) -> Version:
    if tombstone:
        return Version(tenant="t", bucket="b", key=key, hlc=hlc, node=node, size=0,
                       content_hash=b"", tombstone=True)
    return Version(tenant="t", bucket="b", key=key, hlc=hlc, node=node, size=3,
                   content_hash=b"h" * 32, chunks=(b"c" * 32,), inline=b"x" * 64,
                   metadata={"m": "v" * meta})


@st.composite
def _cluster(draw: st.DrawFn) -> dict[str, list[Version]]:
    """Versions (some delete markers, various metadata sizes) each held by 1..3 nodes."""
    items = draw(st.lists(st.tuples(_KEYS, st.integers(1, 50), st.sampled_from(_NODES),
                                    st.booleans(), st.integers(0, 300)), min_size=1,
                          max_size=40, unique_by=lambda t: t[:3]))  # (key, hlc, node): one
    held: dict[str, dict[tuple[str, int, str], Version]] = {n: {} for n in _NODES}
    for key, hlc, origin, tomb, meta in items:
        v = _version(key, hlc, origin, tomb, meta)
        for node in draw(st.sets(st.sampled_from(_NODES), min_size=1)):
            held[node][(key, hlc, origin)] = v
    return {n: [vs[k] for k in sorted(vs)] for n, vs in held.items()}


def _part(held: Sequence[Version], after: str, versions: bool, limit: int,
          max_bytes: int) -> Part:
    """A node's part as `node.reads.list_local` computes it, over a sorted in-memory store."""
    if versions:
        start = None
        if after:
            key, _, vid = after.rpartition("\x00")
            hlc_hex, _, node = vid.partition(".")
            start = (key, int(hlc_hex, 16), node)

        def fetch(last: Version | None, n: int) -> list[Version]:
            cur = start if last is None else (last.key, last.hlc, last.node)
            return [v for v in held if cur is None or (v.key, v.hlc, v.node) > cur][:n]
        return take_versions(fetch, limit, max_bytes, batch=3)
    current: dict[str, Version] = {}
    for v in held:
        if v.key not in current or v.order > current[v.key].order:
            current[v.key] = v
    heads = [current[k] for k in sorted(current)]

    def fetch_current(last: Version | None, n: int) -> list[Version]:
        cur = after if last is None else last.key
        return [v for v in heads if v.key > cur][:n]
    return take_versions(fetch_current, limit, max_bytes, batch=3)


def _entry_bytes(entries: list[dict[str, object]]) -> int:
    return sum(len(packb(e)) for e in entries)


@given(cluster=_cluster(), versions=st.booleans(), limit=st.integers(1, 12),
       max_bytes=st.integers(1, 1200), down=st.sampled_from([None, *_NODES]))
def test_following_next_lists_each_entry_once(cluster: dict[str, list[Version]], versions: bool,
                                              limit: int, max_bytes: int,
                                              down: str | None) -> None:
    everything = {(v.key, v.hlc, v.node): v for vs in cluster.values() for v in vs}
    if down is not None:  # the answer is built without a node (a listing done without it)
        cluster = {n: vs for n, vs in cluster.items() if n != down}
        everything = {(v.key, v.hlc, v.node): v for vs in cluster.values() for v in vs}
    if versions:
        expected = [everything[k].public_info() for k in sorted(everything)]
    else:
        best: dict[str, Version] = {}
        for v in everything.values():
            if v.key not in best or v.order > best[v.key].order:
                best[v.key] = v
        expected = [best[k].public_info() for k in sorted(best) if not best[k].tombstone]
    got: list[dict[str, object]] = []
    after = ""
    largest = max((len(packb(e)) for e in expected), default=0)
    for _ in range(10_000):
        parts = [_part(vs, after, versions, limit, max_bytes) for vs in cluster.values()]
        entries, cursor = merge_page(parts, versions=versions, limit=limit, max_bytes=max_bytes)
        assert len(entries) <= limit
        assert _entry_bytes(entries) <= max(max_bytes, largest)
        got.extend(entries)
        if cursor is None:
            break
        assert cursor > after  # every page advances
        after = cursor
    assert got == expected


def test_the_page_ends_at_the_first_part_that_stopped_early() -> None:
    """n1 stopped for bytes at "b"; n2 went on to "d": "c" may be on n1 after "b", so the page
    ends at "b" even though n2 already sent "c" and "d"."""
    n1 = Part([_version("a", 1, "n1", False, 0), _version("b", 1, "n1", False, 0)], more=True)
    n2 = Part([_version(k, 1, "n2", False, 0) for k in "acd"], more=False)
    entries, cursor = merge_page([n1, n2], versions=False, limit=100)
    assert [e["key"] for e in entries] == ["a", "b"] and cursor == "b"
    n1_next = Part([_version("c", 2, "n1", True, 0), _version("e", 1, "n1", False, 0)],
                   more=False)
    n2_next = Part([_version(k, 1, "n2", False, 0) for k in "cd"], more=False)
    entries, cursor = merge_page([n1_next, n2_next], versions=False, limit=100)
    assert [e["key"] for e in entries] == ["d", "e"] and cursor is None  # c: deleted on n1


def test_a_part_never_carries_chunk_ids_or_inline_payloads() -> None:
    v = _version("k", 1, "n1", False, 10)
    part = take_versions(lambda last, n: [v] if last is None else [], 10)
    assert part == Part([lean(v)], more=False)
    assert part.versions[0].inline is None and part.versions[0].chunks == ()


def test_largest_entries_fit_the_frame_limit() -> None:
    """1,000 entries of 1 KiB keys and 8 KiB of metadata: parts and the page stay ~1 MiB."""
    big = [Version(tenant="t" * 255, bucket="b" * 63, key=f"{i:04d}" + "k" * 1020,
                   hlc=i + 1, node="n" * 200, size=4096, content_hash=b"h" * 32,
                   chunks=(b"c" * 32,), inline=b"x" * 4096,
                   metadata={f"m{j}": "v" * 1000 for j in range(8)}, request_id=b"r" * 16)
           for i in range(1000)]
    part = take_versions(lambda last, n: [v for v in big if last is None or v.key > last.key][:n],
                         1000)
    assert part.more and 50 < len(part.versions) < 1000
    _, body = encode_body(Reply(rid=1, body={"versions": [v.to_wire() for v in part.versions],
                                             "more": True}))
    assert len(body) < LIST_BYTES + 64 * 1024 < MAX_FRAME
    entries, cursor = merge_page([part, part], versions=False, limit=1000)
    assert cursor is not None and len(entries) <= len(part.versions)
    _, body = encode_body(Reply(rid=1, body={"entries": entries, "next": cursor}))
    assert len(body) < LIST_BYTES + 64 * 1024


@given(parts=st.lists(st.lists(st.text(min_size=1, max_size=5), max_size=20), max_size=3),
       max_bytes=st.integers(1, 60))
def test_bucket_pages_list_each_bucket_once(parts: list[list[str]], max_bytes: int) -> None:
    held = [sorted(set(p)) for p in parts]
    expected = sorted({b for p in held for b in p})
    got: list[str] = []
    after = ""
    for _ in range(1000):
        page, cursor = merge_buckets([take_buckets([b for b in p if b > after], max_bytes)
                                      for p in held], max_bytes)
        got.extend(page)
        if cursor is None:
            break
        assert cursor > after
        after = cursor
    assert got == expected


def test_bucket_part_says_more_when_it_stops_early() -> None:
    assert take_buckets(["a" * 10, "b" * 10], max_bytes=15) == BucketPart(["a" * 10], more=True)
