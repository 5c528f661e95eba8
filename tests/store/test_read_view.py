"""A chunk read for its payload alone: a view of the record read from the log, not a copy,
with the checks and errors of ``read_chunk``."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

from hdsd import IntegrityError, NotFound
from hdsd._packing import packb
from hdsd.store import ChunkRecord, Store
from hdsd.store import _format as F
from hdsd.store._fs import FileSystem
from hdsd.store._records import chunk_payload_view, decode_record
from tests.helpers.sealing import SEALING

from ._util import chunk_id

TENANTS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=70)


@given(size=st.sampled_from([0, 1, 255, 256, (64 << 10) - 1, 64 << 10, 1 << 20]),
       tenant=TENANTS)
def test_the_payload_is_a_view_of_the_record_body(size: int, tenant: str) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    cid = chunk_id(payload)
    body = packb({"t": tenant, "c": cid, "p": payload})  # what the log holds, any bin width
    view = chunk_payload_view(memoryview(body), tenant, cid)
    assert view is not None and view == payload
    assert view.obj is body  # not copied
    other = chunk_id(payload + b"x")
    for not_it in (chunk_payload_view(memoryview(body), tenant + "x", cid),  # another tenant
                   chunk_payload_view(memoryview(body), tenant, other),  # another chunk
                   chunk_payload_view(memoryview(body[:-1]), tenant, cid),  # length lies
                   chunk_payload_view(memoryview(body + b"\0"), tenant, cid),
                   chunk_payload_view(memoryview(packb({"c": cid, "t": tenant, "p": payload})),
                                      tenant, cid)):  # another encoding
        assert not_it is None
    # Anything it does not recognise is still decoded the usual way.
    record = decode_record(1, packb({"c": cid, "t": tenant, "p": payload}))
    assert record == ChunkRecord(tenant, cid, payload)


def test_a_store_reads_a_chunk_as_a_view_with_read_chunks_checks(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", sealing=SEALING) as store:
        big, small = bytes(range(256)) * 4096, b"tiny"
        records = [ChunkRecord("t", chunk_id(p), p) for p in (big, small)]
        store.commit_sync(records)
        for r in records:
            view = store.read_chunk_view("t", r.chunk_id)
            assert isinstance(view, memoryview) and view == r.payload
            assert store.read_chunk("t", r.chunk_id) == r.payload
            assert type(store.read_chunk("t", r.chunk_id)) is bytes
        with pytest.raises(NotFound):
            store.read_chunk_view("t", chunk_id(b"absent"))
        with pytest.raises(NotFound):
            store.read_chunk_view("other", records[0].chunk_id)
        # A flipped byte of the payload fails the record's checksum, as for read_chunk.
        loc = store._index.chunk_location("t", records[0].chunk_id)
        assert loc is not None
        with open(tmp_path / "s" / F.segment_name(loc.segment), "r+b") as f:
            f.seek(loc.offset + loc.length - 10)
            byte = f.read(1)
            f.seek(loc.offset + loc.length - 10)
            f.write(bytes([byte[0] ^ 1]))
        with pytest.raises(IntegrityError):
            store.read_chunk_view("t", records[0].chunk_id)


def test_a_chunk_in_the_page_cache_is_read_now_with_the_same_checks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether this file system tells what its page cache holds (RWF_NOWAIT): if not, nothing
    # is read now, and every read goes to a worker thread as before.
    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * 4096)
    fd = os.open(probe, os.O_RDONLY)
    try:
        tells = FileSystem().pread_cached(fd, 4096, 0) == b"x" * 4096
    finally:
        os.close(fd)
    with Store.open(tmp_path / "s", sealing=SEALING) as store:
        payload = bytes(range(256)) * 160  # 40 KiB
        record = ChunkRecord("t", chunk_id(payload), payload)
        store.commit_sync([record])
        # Just written: its pages are cached.
        assert store.read_chunk_now("t", record.chunk_id) == (payload if tells else None)
        if not tells:
            return
        with pytest.raises(NotFound):
            store.read_chunk_now("t", chunk_id(b"absent"))
        # Not (all) cached, or no RWF_NOWAIT here: None, for a worker thread's read.
        monkeypatch.setattr(store._fs, "pread_cached", lambda fd, n, at: None)
        assert store.read_chunk_now("t", record.chunk_id) is None
        monkeypatch.undo()
        # While a compaction holds the segments, the event loop does not wait for it.
        with store._segments.exclusive():
            assert store.read_chunk_now("t", record.chunk_id) is None
        assert store.read_chunk_now("t", record.chunk_id) == payload
        # A flipped byte fails the record's checksum, as for read_chunk_view.
        loc = store._index.chunk_location("t", record.chunk_id)
        assert loc is not None
        with open(tmp_path / "s" / F.segment_name(loc.segment), "r+b") as f:
            f.seek(loc.offset + loc.length - 10)
            byte = f.read(1)
            f.seek(loc.offset + loc.length - 10)
            f.write(bytes([byte[0] ^ 1]))
        with pytest.raises(IntegrityError):
            store.read_chunk_now("t", record.chunk_id)
