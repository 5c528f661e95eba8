"""Crash tests: break the log the ways a crash or a bad disk can, reopen, check invariants.

* a power cut during a batch (its fdatasync fails, then unsynced writes are lost or torn);
* the log cut at a random byte, its tail zero-filled, or one byte flipped, with the index
  deleted (recovery rebuilds it from the log) or kept (the index knows what was acknowledged).
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from hdsd import CorruptLogError, IntegrityError, StoreFailedError
from hdsd.store import ChunkRecord, Store, Version
from hdsd.store import _format as F
from hdsd.store._log import Frame, scan_segment
from tests.helpers.sealing import SEALING

from ._util import FaultyFS, chunked_put, inline_version, tombstone

SEGMENT = 2048
OPS = st.lists(
    st.tuples(st.sampled_from(["inline", "chunked", "delete"]), st.integers(0, 4),
              st.binary(max_size=400)),
    min_size=1, max_size=10)
expensive = settings(max_examples=30)


def build(i: int, op: tuple[str, int, bytes]) -> list[ChunkRecord | Version]:
    kind, k, data = op
    key, hlc = f"k{k}", i + 1  # one new version per commit: each commit is its own batch
    if kind == "inline":
        return [inline_version("t", "b", key, hlc, "n", data)]
    if kind == "chunked":
        return chunked_put("t", "b", key, hlc, "n", [data, data[::-1] + b"x"])
    return [tombstone("t", "b", key, hlc, "n")]


def assert_present(store: Store, records: list[ChunkRecord | Version]) -> None:
    for r in records:
        if isinstance(r, ChunkRecord):
            assert store.read_chunk(r.tenant, r.chunk_id) == r.payload
        else:
            assert store.get_version(r.tenant, r.bucket, r.key, r.hlc, r.node) == r


def version_present(store: Store, records: list[ChunkRecord | Version]) -> bool:
    v = records[-1]
    assert isinstance(v, Version)
    return store.get_version(v.tenant, v.bucket, v.key, v.hlc, v.node) is not None


@expensive
@given(ops=OPS, fail_at=st.integers(2, 14), seed=st.integers(0, 2**32 - 1))
def test_power_cut_during_a_batch(ops: list[tuple[str, int, bytes]], fail_at: int,
                                  seed: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        fs = FaultyFS(fail_fdatasync_at=fail_at)
        acked: list[list[ChunkRecord | Version]] = []
        failed: list[list[ChunkRecord | Version]] = []
        with Store.open(d, segment_bytes=SEGMENT, fs=fs, sealing=SEALING) as store:
            for i, op in enumerate(ops):
                records = build(i, op)
                try:
                    store.commit_sync(records)
                except StoreFailedError:
                    failed.append(records)
                else:
                    assert not failed, "acknowledged a write after a failed fdatasync"
                    acked.append(records)
        fs.crash(random.Random(seed))
        with Store.open(d, segment_bytes=SEGMENT, sealing=SEALING) as store:
            for records in acked:
                assert_present(store, records)
            if failed:
                # The batch in flight at the cut is all there or not at all.
                if version_present(store, failed[0]):
                    assert_present(store, failed[0])
                for records in failed[1:]:  # refused without being written
                    assert not version_present(store, records)
            extra = inline_version("t", "b", "after", 10_000, "n", b"new")
            store.commit_sync([extra])
            assert_present(store, [extra])


@dataclass
class Written:
    commits: list[list[ChunkRecord | Version]]
    ends: list[tuple[int, int]]  # (segment, offset) at the end of each commit's batch
    frames: dict[int, list[list[Frame]]]  # segment -> its batches


def write_log(d: str, ops: list[tuple[str, int, bytes]]) -> Written:
    commits, ends = [], []
    with Store.open(d, segment_bytes=SEGMENT, sealing=SEALING) as store:
        for i, op in enumerate(ops):
            records = build(i, op)
            store.commit_sync(records)
            stats = store.statistics()
            commits.append(records)
            ends.append((stats.head_segment, stats.head_offset))
    frames: dict[int, list[list[Frame]]] = {}
    for seg in sorted({s for s, _ in ends}):
        with open(seg_path(d, seg), "rb") as f:
            data = f.read()
        batches: list[list[Frame]] = []
        scan_segment(data, F.SEGMENT_HEADER_SIZE, len(data), batches.append)
        frames[seg] = batches
    return Written(commits, ends, frames)


def seg_path(d: str, number: int) -> str:
    return os.path.join(d, F.segment_name(number))


def drop_index(d: str) -> None:
    for name in os.listdir(d):
        if name.startswith("index.sqlite3"):
            os.unlink(os.path.join(d, name))


@expensive
@pytest.mark.parametrize("how", ["cut", "zero"])
@pytest.mark.parametrize("keep_index", [False, True])
@given(ops=OPS, data=st.data())
def test_cut_or_zeroed_tail(how: str, keep_index: bool, ops: list[tuple[str, int, bytes]],
                            data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        w = write_log(d, ops)
        seg = data.draw(st.sampled_from(sorted(w.frames)), label="segment")
        used = w.frames[seg][-1][-1].end if w.frames[seg] else F.SEGMENT_HEADER_SIZE
        at = data.draw(st.integers(F.SEGMENT_HEADER_SIZE, used), label="offset")
        for later in [s for s in w.frames if s > seg]:
            os.unlink(seg_path(d, later))
        with open(seg_path(d, seg), "r+b") as f:
            original = f.read()
            if how == "cut":
                f.truncate(at)
            else:
                f.seek(at)
                f.write(bytes(len(original) - at))
        if how == "zero":  # zeroing bytes that were zero already damages nothing
            while at < used and original[at] == 0:
                at += 1
        if not keep_index:
            drop_index(d)
        lost_acked = (seg, at) < w.ends[-1]
        if keep_index and lost_acked:
            with pytest.raises(CorruptLogError) as info:
                Store.open(d, segment_bytes=SEGMENT, sealing=SEALING)
            # Names the damaged segment, or the later one the index needs that is now gone.
            assert info.value.segment in {F.segment_name(s) for s in w.frames if s >= seg}
            return
        with Store.open(d, segment_bytes=SEGMENT, verify=True, sealing=SEALING) as store:
            for records, end in zip(w.commits, w.ends, strict=True):
                if end <= (seg, at):
                    assert_present(store, records)
                else:  # gone whole: nothing half-written
                    assert not version_present(store, records)
            torn = store.statistics().torn_tails
            whole = [b[-1].end for b in w.frames[seg] if b[-1].end <= at]
            assert bool(torn) == (at > max(whole, default=F.SEGMENT_HEADER_SIZE))


@expensive
@pytest.mark.parametrize("keep_index", [False, True])
@given(ops=OPS, data=st.data())
def test_flipped_byte(keep_index: bool, ops: list[tuple[str, int, bytes]],
                      data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        w = write_log(d, ops)
        seg = data.draw(st.sampled_from(sorted(s for s in w.frames if w.frames[s])))
        batches = w.frames[seg]
        pos = data.draw(st.integers(F.SEGMENT_HEADER_SIZE, batches[-1][-1].end - 1))
        hit = next(f for b in batches for f in b if f.offset <= pos < f.end)
        with open(seg_path(d, seg), "r+b") as f:
            f.seek(pos)
            byte = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([byte ^ (1 << data.draw(st.integers(0, 7)))]))
        if not keep_index:
            drop_index(d)
        in_last_batch = seg == max(w.frames) and any(hit is f for f in batches[-1])
        if not keep_index and in_last_batch:
            # Indistinguishable from a batch torn by a power cut: cut, kept for forensics.
            with Store.open(d, segment_bytes=SEGMENT, sealing=SEALING) as store:
                for records in w.commits[:-1]:
                    assert_present(store, records)
                assert not version_present(store, w.commits[-1])
                assert store.statistics().torn_tails
            return
        with pytest.raises(CorruptLogError) as info:
            Store.open(d, segment_bytes=SEGMENT, verify=True, sealing=SEALING)
        assert (info.value.segment, info.value.offset) == (F.segment_name(seg), hit.offset)


async def test_a_damaged_chunk_read_is_an_integrity_error(tmp_path: str) -> None:
    parts = [b"A" * 100, b"B" * 100]
    records = chunked_put("t", "b", "k", 1, "n", parts)
    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:
        store.commit_sync(records)
        store.commit_sync([inline_version("t", "b", "later", 2, "n", b"x")])
    with open(seg_path(str(tmp_path), 1), "r+b") as f:
        f.seek(F.SEGMENT_HEADER_SIZE + F.FRAME_HEADER_SIZE + 50)
        f.write(b"Z")
    # not at the tail: opens
    with Store.open(tmp_path, segment_bytes=SEGMENT, sealing=SEALING) as store:
        first = records[0]
        assert isinstance(first, ChunkRecord)
        with pytest.raises(IntegrityError, match="checksum"):
            store.read_chunk("t", first.chunk_id)
        with pytest.raises(CorruptLogError):
            store.verify_log()


@expensive
@given(ops=OPS, data=st.data())
def test_salvage_sets_the_damaged_batch_aside_and_replays_the_rest(
        ops: list[tuple[str, int, bytes]], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        w = write_log(d, ops)
        seg = data.draw(st.sampled_from(sorted(s for s in w.frames if w.frames[s])))
        batches = w.frames[seg]
        pos = data.draw(st.integers(F.SEGMENT_HEADER_SIZE, batches[-1][-1].end - 1))
        batch = next(b for b in batches if b[0].offset <= pos < b[-1].end)
        with open(seg_path(d, seg), "r+b") as f:
            f.seek(pos)
            byte = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([byte ^ (1 << data.draw(st.integers(0, 7)))]))
        drop_index(d)  # the damage lies in what recovery must replay
        lost = (seg, batch[-1].end)
        gone = {r.chunk_id for records, end in zip(w.commits, w.ends, strict=True)
                if end == lost for r in records if isinstance(r, ChunkRecord)}
        with Store.open(d, segment_bytes=SEGMENT, salvage=True, sealing=SEALING) as store:
            for records, end in zip(w.commits, w.ends, strict=True):
                if end == lost:
                    assert not version_present(store, records)
                else:
                    # A later put of the same content wrote no chunk record of its own (the
                    # store knew it): that chunk went with the lost batch, and scrub fetches
                    # it from a replica. Everything else is here.
                    assert_present(store, [r for r in records if not (
                        isinstance(r, ChunkRecord) and r.chunk_id in gone)])
            stats = store.statistics()
            if seg == max(w.frames) and batch is batches[-1]:  # a torn tail, as ever
                assert stats.torn_tails and not stats.salvaged
            else:
                [where] = stats.salvaged
                assert where.startswith(f"{F.segment_name(seg)}:{batch[0].offset}-")
                assert os.path.exists(seg_path(d, seg) + F.DAMAGED_INFIX + str(batch[0].offset))
            extra = inline_version("t", "b", "after", 10_000, "n", b"new")
            store.commit_sync([extra])  # and it takes writes again
        # the index now covers it all
        with Store.open(d, segment_bytes=SEGMENT, sealing=SEALING) as store:
            assert_present(store, [extra])
