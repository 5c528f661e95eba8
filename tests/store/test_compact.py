"""Compaction reclaims the segments holding a shredded tenant's records and superseded copies,
keeps every live record readable (also after a reopen, and after rebuilding the index from the
log with the removed segments as expected gaps), and the shredded bytes are gone from disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hdsd.store import ChunkRecord, Store
from hdsd.store._sealed import seal_version
from tests.helpers.sealing import SEALING

from ._util import chunked_put, inline_version

SEGMENT = 4096
MARK = b"SHREDDED-PATIENT-RECORD"


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name.endswith(".seg")}


def _write(store: Store) -> tuple[list[list[ChunkRecord | object]], list[list[object]]]:
    dead, live = [], []
    for i in range(12):  # the tenant to shred first, interleaved with a live one
        d = chunked_put("gone", "b", f"k{i}", i + 1, "n", [MARK + bytes([i]) * 300])
        store.commit_sync(d)
        dead.append(d)
        v = [inline_version("kept", "b", f"k{i}", i + 1, "n", b"live" + bytes([i]) * 200)]
        store.commit_sync(v)
        live.append(v)
    for i in range(12):  # then enough live writes to seal the segments above
        c = chunked_put("kept", "b", f"c{i}", 100 + i, "n", [bytes([i]) * 700])
        store.commit_sync(c)
        live.append(c)
    return dead, live


def _assert_live(store: Store, live: list[list[object]]) -> None:
    for records in live:
        for r in records:
            if isinstance(r, ChunkRecord):
                assert store.read_chunk(r.tenant, r.chunk_id) == r.payload
            else:
                assert store.get_version(r.tenant, r.bucket, r.key, r.hlc, r.node) == r  # type: ignore[attr-defined]


def test_compaction_reclaims_a_shredded_tenant(tmp_path: Path) -> None:
    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:
        dead, live = _write(store)
        before = _files(tmp_path)
        assert any(MARK in data for data in before.values())
        report = store.compact(frozenset({"gone"}))
        after = _files(tmp_path)
        assert report.segments_removed >= 2 and report.bytes_freed > 0
        assert len(after) < len(before)
        assert report.index_rows_forgotten == sum(len(d) for d in dead) + 12  # + heads
        assert not any(MARK in data for data in after.values())  # gone from the disk
        _assert_live(store, live)
        assert store.versions("gone", "b", "k0") == []
        assert not store.has_chunk("gone", dead[0][0].chunk_id)  # type: ignore[union-attr]
        extra = inline_version("kept", "b", "after", 10_000, "n", b"new")
        store.commit_sync([extra])  # and writes go on
        live.append([extra])
    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:  # gaps at reopen
        _assert_live(store, live)
    for p in tmp_path.glob("index.sqlite3*"):
        p.unlink()
    # rebuilt from log
    with Store.open(tmp_path, segment_bytes=SEGMENT, verify=True, sealing=SEALING) as store:
        _assert_live(store, live)
        assert store.versions("gone", "b", "k0") == []


def test_compaction_drops_superseded_copies_and_keeps_what_is_live(tmp_path: Path) -> None:
    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:
        _, live = _write(store)
        assert store.compact().segments_removed == 0  # nothing is garbage yet
        first = next(r for r in live[12] if isinstance(r, ChunkRecord))
        loc = store._index.chunk_location(first.tenant, first.chunk_id)
        assert loc is not None
        store.quarantine_chunk(first.tenant, first.chunk_id, loc, "test")
        store.commit_sync([first])  # a good copy written again: the old one is garbage
        for i in range(8):
            store.commit_sync([inline_version("kept", "b", f"pad{i}", 500 + i, "n",
                                              os.urandom(600))])
        # One stale copy is not worth rewriting a segment for, by default...
        assert store.compact().segments_removed == 0
        # ... but any garbage is reclaimed when asked.
        report = store.compact(min_garbage=0.0)
        assert report.segments_removed >= 1 and report.records_dropped >= 1
        _assert_live(store, live)


def test_a_location_read_before_compaction_is_checked_quietly_after_it(tmp_path: Path) -> None:
    # Scrub walks locations while compaction may delete their segment: not an error.
    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:
        dead, _ = _write(store)
        first = dead[0][-1]
        seal = SEALING.seal_for(first.tenant)
        assert seal is not None
        loc = store._index.location_of(seal_version(first, seal))
        assert loc is not None
        store.compact(frozenset({"gone"}))
        assert not (tmp_path / f"{loc.segment:016d}.seg").exists()
        store.check_record(loc)


def test_statistics_while_a_compaction_removes_segments(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Status is read on the event loop while compaction runs in a worker thread: a segment
    # listed, then removed before its size is read, must not fail the status request (it did:
    # FileNotFoundError, "internal error on the node" during `hdsd compact --wait`).
    import hdsd.store._store as store_module

    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:
        store.commit_sync([inline_version("kept", "b", "k", 1, "n", b"x")])
        listed = store_module.list_segments

        def with_a_vanished_one(fs: object, directory: object) -> list[int]:
            numbers = listed(fs, directory)
            return [*numbers, max(numbers) + 1000]  # listed, gone by the time it is measured

        monkeypatch.setattr(store_module, "list_segments", with_a_vanished_one)
        stats = store.statistics()
        assert stats.segments == len(listed(store._fs, store._dir))
        assert stats.disk_bytes > 0
