"""``hdsd store migrate``: a store of log format 1 (names in clear) is refused at open, then
rewritten sealed, crash-safely; shredded tenants' records are dropped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hdsd._errors import StoreError
from hdsd._packing import packb
from hdsd.store import ChunkRecord, Store, Version, migrate_store, migration_pending
from hdsd.store import _format as F
from hdsd.store._log import frame_batch
from hdsd.store._migrate import DONE_MARK, MIGRATING_SUFFIX, OLD_SUFFIX
from hdsd.store._records import EncodedRecord
from tests.helpers.sealing import TestSealing

from ._util import chunked_put, inline_version

NAMES = [b"patient-555-garnier", b"bilan-patient-555", b"patient-666-shredded"]


def _v1_body(record: ChunkRecord | Version) -> EncodedRecord:
    if isinstance(record, ChunkRecord):
        body = packb({"t": record.tenant, "c": record.chunk_id, "p": record.payload})
        kind = F.KIND_CHUNK
    else:
        body = packb(record.to_wire())  # format 1: the version record in clear
        kind = F.KIND_VERSION
    return EncodedRecord(kind, body, F.digest(body), record)  # type: ignore[arg-type]


def _write_format1(directory: Path) -> list[Version]:
    """A store as hdsd wrote it before names were sealed: two segments of clear records."""
    directory.mkdir(parents=True)
    a = inline_version("t", "patient-555-garnier", "bilan-patient-555", 1, "n1", b"hb 14",
                       request_id=b"r1")
    b = inline_version("t", "patient-555-garnier", "bilan-patient-555", 2, "n1", b"hb 15")
    big = chunked_put("t", "scans", "ct-1", 3, "n1", [os.urandom(5000), os.urandom(7000)])
    gone = inline_version("gone", "patient-666-shredded", "x", 4, "n1", b"old")
    batches = [[a], [*big], [b, gone]]
    for number, segment in enumerate((batches[:2], batches[2:]), start=1):
        head = F.SEGMENT_HEADER.pack(F.SEGMENT_MAGIC, 1, 0, 0, number, 0)[:24]
        data = bytearray(head + F.U64.pack(F.digest(head)))
        for records in segment:
            framed, _ = frame_batch([_v1_body(r) for r in records], len(data))
            data += framed
        (directory / F.segment_name(number)).write_bytes(bytes(data) + bytes(4096))
    v = big[-1]
    assert isinstance(v, Version)
    return [a, b, v]


def test_a_format_1_store_is_refused_then_migrated_sealed(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    a, b, big = _write_format1(store_dir)
    sealing = TestSealing()
    sealing.shred("gone")
    with pytest.raises(StoreError, match="hdsd store migrate"):
        Store.open(store_dir, sealing=sealing)
    report = migrate_store(store_dir, sealing)
    assert (report.migrated, report.versions, report.chunks, report.dropped) == (True, 3, 2, 1)
    assert not os.path.exists(str(store_dir) + OLD_SUFFIX)
    assert migration_pending(store_dir) is None
    for path in store_dir.iterdir():
        data = path.read_bytes()
        assert not any(name in data for name in NAMES), path
    with Store.open(store_dir, sealing=sealing) as store:
        assert store.versions("t", "patient-555-garnier", "bilan-patient-555") == [a, b]
        assert store.current("t", "scans", "ct-1") == big
        assert all(store.read_chunk("t", c) for c in big.chunks)
        assert store.find_request("t", b"r1") == a
        assert [v.key for v in store.list_current("t", "patient-555-garnier")] == [
            "bilan-patient-555"]
    assert migrate_store(store_dir, sealing).migrated is False  # idempotent


def test_a_migration_interrupted_after_the_copy_is_finished_by_the_next_run(
        tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    a, _, _ = _write_format1(store_dir)
    sealing = TestSealing()
    migrate_store(store_dir, sealing)
    # Rebuild the state of a crash between steps 2 and 3: the complete copy beside the old.
    os.rename(store_dir, str(store_dir) + MIGRATING_SUFFIX)
    (Path(str(store_dir) + MIGRATING_SUFFIX) / DONE_MARK).write_bytes(b"")
    _write_format1(Path(str(store_dir) + OLD_SUFFIX))
    assert "did not finish" in (migration_pending(store_dir) or "")
    assert migrate_store(store_dir, sealing).migrated
    assert migration_pending(store_dir) is None
    with Store.open(store_dir, sealing=sealing) as store:
        assert store.versions("t", a.bucket, a.key)[0] == a


def test_a_migration_interrupted_during_the_copy_starts_over(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    _write_format1(store_dir)
    partial = Path(str(store_dir) + MIGRATING_SUFFIX)
    partial.mkdir()
    (partial / "0000000000000001.seg").write_bytes(b"half a copy")
    report = migrate_store(store_dir, TestSealing())
    assert report.versions == 4 and not partial.exists()
