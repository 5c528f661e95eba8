"""Purge records: a version deleted for good leaves the index, is refused if it arrives again
(a repair or a late hint from a replica that has not learnt of the purge), stays gone when the
index is rebuilt from the log, and its data is reclaimed by compaction — while content another
version still names is kept."""

from __future__ import annotations

import os
from pathlib import Path

from hdsd.store import ChunkRecord, Store, Version, retained_until, visible_versions
from tests.helpers.sealing import SEALING

from ._util import chunk_id, chunked_put, inline_version, tombstone

SEGMENT = 4096
MARK = b"PURGED-PATIENT-SCAN"


def purge(target: Version, hlc: int, node: str = "n2", request_id: bytes = b"") -> Version:
    return Version(target.tenant, target.bucket, target.key, hlc, node, size=0,
                   content_hash=b"", purges=(target.hlc, target.node), request_id=request_id)


def _segments(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name.endswith(".seg")}


def test_purge_record_round_trips_and_validates() -> None:
    v = inline_version("t", "b", "k", 5, "n", b"x")
    p = purge(v, 9)
    assert Version.from_wire(p.to_wire()) == p
    assert "p" not in v.to_wire()  # records without a purge are unchanged
    for bad in ({"tombstone": True}, {"size": 1}):
        try:
            Version("t", "b", "k", 9, "n", content_hash=b"", purges=(5, "n"),
                    **{"size": 0, **bad})  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"a purge record with {bad} was accepted")


def test_purge_drops_the_version_and_moves_the_head_back(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        v1 = inline_version("t", "b", "k", 10, "n", b"one")
        v2 = inline_version("t", "b", "k", 20, "n", b"two")
        store.commit_sync([v1, v2])
        p = purge(v2, 30)
        store.commit_sync([p])
        assert store.get_version("t", "b", "k", 20, "n") is None
        assert store.current("t", "b", "k") == v1  # the head went back, not to the record
        assert store.versions("t", "b", "k") == [v1, p]
        assert visible_versions(store.versions("t", "b", "k")) == [v1]
        assert [v.key for v in store.list_current("t", "b")] == ["k"]
        assert store.list_versions("t", "b") == [v1]  # a purge record is never listed
        assert store.is_purged("t", "b", "k", 20, "n")
        # The same version arriving again (repair, a hint) is neither written nor indexed.
        store.commit_sync([v2])
        assert store.get_version("t", "b", "k", 20, "n") is None
        # Purging the last version leaves no head: the key is not listed at all.
        store.commit_sync([purge(v1, 40)])
        assert store.current("t", "b", "k") is None
        assert store.list_current("t", "b", include_deleted=True) == []
        assert store.buckets("t") == []
        # The purge record is found by its request id (a retried purge is settled, not redone).
        store.commit_sync([purge(tombstone("t", "b", "gone", 1, "n"), 50, request_id=b"r" * 16)])
        found = store.find_request("t", b"r" * 16)
        assert found is not None and found.purges == (1, "n")


def test_purge_before_its_target_and_rebuilt_index(tmp_path: Path) -> None:
    """A purge record may arrive before the version it purges (the version's hint is still on
    its way): the version is then refused; and an index rebuilt from the log agrees."""
    v = inline_version("t", "b", "k", 10, "n", b"late")
    keep = inline_version("t", "b", "k", 5, "n", b"kept")
    with Store.open(tmp_path, sealing=SEALING) as store:
        store.commit_sync([keep, purge(v, 30)])
        store.commit_sync([v])
        assert store.get_version("t", "b", "k", 10, "n") is None
    os.remove(tmp_path / "index.sqlite3")
    with Store.open(tmp_path, sealing=SEALING) as store:
        assert store.get_version("t", "b", "k", 10, "n") is None
        assert store.current("t", "b", "k") == keep


def test_compaction_reclaims_a_purged_version_but_not_shared_chunks(tmp_path: Path) -> None:
    shared = b"SHARED" * 100
    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:
        gone = chunked_put("t", "b", "old", 10, "n", [MARK + b"1" * 300, shared])
        other = chunked_put("t", "b", "other", 11, "n", [shared])  # same content: one chunk
        store.commit_sync(gone)
        store.commit_sync(other)
        for i in range(12):  # seal the segments above
            store.commit_sync(chunked_put("t", "b", f"fill{i}", 100 + i, "n",
                                          [bytes([i]) * 700]))
        target = gone[-1]
        assert isinstance(target, Version)
        store.commit_sync([purge(target, 200)])
        assert any(MARK in data for data in _segments(tmp_path).values())
        assert store.release_purged(grace_s=3600) == 0  # within the grace: nothing yet
        assert store.release_purged(grace_s=0) == 1  # the marked chunk; the shared one is named
        report = store.compact(min_garbage=0.0)
        assert report.segments_removed >= 1
        assert not any(MARK in data for data in _segments(tmp_path).values())
        assert store.read_chunk("t", chunk_id(shared)) == shared
        assert not store.has_chunk("t", chunk_id(MARK + b"1" * 300))
    os.remove(tmp_path / "index.sqlite3")  # rebuilt from what is left: still consistent
    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:
        assert store.get_version("t", "b", "old", 10, "n") is None
        assert store.read_chunk("t", chunk_id(shared)) == shared


def test_a_released_chunk_written_again_is_kept(tmp_path: Path) -> None:
    """A put of the same content after the purge writes the chunk again and names it: the
    chunk is in use, and releasing does not drop it."""
    data = b"again" * 50
    with Store.open(tmp_path, sealing=SEALING) as store:
        first = chunked_put("t", "b", "a", 10, "n", [data])
        store.commit_sync(first)
        target = first[-1]
        assert isinstance(target, Version)
        store.commit_sync([purge(target, 20)])
        again = chunked_put("t", "b", "b", 30, "n", [data])
        store.commit_sync(again)
        assert store.release_purged(grace_s=0) == 0
        assert store.read_chunk("t", chunk_id(data)) == data
        # And a released chunk that is never named again goes.
        lone = [ChunkRecord("t", chunk_id(b"lone"), b"lone")]
        v = Version("t", "b", "c", 40, "n", size=4, content_hash=b"h",
                    chunks=(chunk_id(b"lone"),))
        store.commit_sync([*lone, v])
        store.commit_sync([purge(v, 50)])
        assert store.release_purged(grace_s=0) == 1
        assert not store.has_chunk("t", chunk_id(b"lone"))


def test_retention_records_are_never_current_nor_listed(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        v1 = inline_version("t", "b", "k", 10, "n", b"one")
        v2 = inline_version("t", "b", "k", 20, "n", b"two")
        keep = Version("t", "b", "k", 30, "n", size=0, content_hash=b"",
                       retains=(10, "n", 123_456))
        assert Version.from_wire(keep.to_wire()) == keep
        store.commit_sync([v1, v2, keep])
        assert store.current("t", "b", "k") == v2
        assert store.list_versions("t", "b") == [v1, v2]
        records = store.versions("t", "b", "k")
        assert visible_versions(records) == [v1, v2]
        assert retained_until(records, v1) == 123_456 and retained_until(records, v2) == 0
        # Purging the current version moves the head back past the retention record.
        store.commit_sync([purge(v2, 40)])
        assert store.current("t", "b", "k") == v1


def test_one_batch_mixing_versions_and_purges_applies_in_order(tmp_path: Path) -> None:
    # Plain versions are indexed many at a time (executemany): a purge record in the same
    # batch must still apply after the versions before it and be seen by those after it.
    with Store.open(tmp_path, sealing=SEALING) as store:
        v1 = inline_version("t", "b", "k", 10, "n", b"one")
        v2 = inline_version("t", "b", "k", 20, "n", b"two")
        other = inline_version("t", "b", "o", 15, "n", b"other")
        p = purge(v2, 30)
        late = inline_version("t", "b", "k", 20, "n", b"two")  # v2 again, after its purge
        v3 = tombstone("t", "b", "o", 40, "n")
        store.commit_sync([v1, v2, other, p, late, v3])
        assert store.get_version("t", "b", "k", 20, "n") is None
        assert store.current("t", "b", "k") == v1
        assert store.versions("t", "b", "k") == [v1, p]
        assert store.current("t", "b", "o") == v3  # a tombstone is the head
        assert store.statistics().records == 4  # v1, other, p, v3
        # The same batch again changes nothing.
        store.commit_sync([v1, v2, other, p, late, v3])
        assert store.versions("t", "b", "k") == [v1, p]
        assert store.current("t", "b", "o") == v3
    with Store.open(tmp_path, sealing=SEALING) as store:  # and the index rebuilt from the log
        assert store.versions("t", "b", "k") == [v1, p]
        assert store.current("t", "b", "o") == v3
