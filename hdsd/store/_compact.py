"""Compaction: reclaim the space of garbage in sealed log segments.

Garbage is a record of a tenant named dead (crypto-shredded: unreadable forever) or a copy the
index does not point to (a record written twice, a quarantined chunk, an old compaction's
source). For each sealed segment holding garbage, the live records are committed again at the
head as ordinary batches and the index is moved to the new copies; once the index no longer
points into the segment and that is durable, the segment's number is appended to
``removed-segments`` (so recovery expects the gap) and the file is deleted.

Crash safety: until the delete, the old copies stay valid (the index points to one copy or the
other, both intact); the index is checkpointed (synced) before the delete, so it can never
point into a deleted file; a crash after the ``removed-segments`` line but before the delete
leaves a file recovery replays harmlessly (applying is idempotent).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import StoreError
from . import _format as F
from ._index import Location
from ._log import Frame, scan_segment
from ._records import ChunkRecord, StoredRecord, decode_record, encode_record
from ._recovery import REMOVED_NAME, _with_map, list_segments
from ._writer import PendingCommit

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["CompactReport", "SegmentGate", "compact"]

_BATCH_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class CompactReport:
    segments_removed: int
    bytes_freed: int  # size of the segment files deleted (preallocation included)
    records_moved: int  # live records committed again at the head
    bytes_moved: int
    records_dropped: int  # garbage left behind in the deleted segments
    index_rows_forgotten: int  # rows of dead tenants dropped from the index
    sealed_through: int  # every segment up to this one was examined (a next run may start after)


class SegmentGate:
    """Readers of segment files share it; deleting a segment takes it alone, so no read is
    ever made through a descriptor closed (and maybe reused) under it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._closing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._closing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._closing:
                self._cond.wait()
            self._closing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._closing = False
                self._cond.notify_all()


def _records(store: Store, number: int) -> list[tuple[StoredRecord, Location]]:
    out: list[tuple[StoredRecord, Location]] = []

    def scan(buf: object, size: int) -> None:
        def on_batch(frames: list[Frame]) -> None:
            for f in frames:
                out.append((decode_record(f.kind, f.body), Location(number, f.offset, f.size)))
        scan_segment(buf, F.SEGMENT_HEADER_SIZE, size, on_batch)  # type: ignore[arg-type]

    _with_map(store._fs, os.path.join(store._dir, F.segment_name(number)), scan)
    return out


def _recommit(store: Store, records: list[StoredRecord]) -> int:
    """Commit *records* again at the head, moving the index to the new copies."""
    written = 0
    batch: list[StoredRecord] = []
    size = 0
    for i, record in enumerate(records):
        batch.append(record)
        size += len(record.payload) if isinstance(record, ChunkRecord) else 256
        if size >= _BATCH_BYTES or i == len(records) - 1:
            encoded = [encode_record(r) for r in batch]
            nbytes = sum(F.FRAME_HEADER_SIZE + len(e.body) for e in encoded)
            pending = PendingCommit(encoded, nbytes, store._writer.wakers.for_thread(),
                                    relocate=True)
            store._writer.submit(pending)
            assert pending.waker.event is not None
            pending.waker.event.wait()
            if pending.error is not None:
                raise pending.error
            written += nbytes
            batch, size = [], 0
    store._writer.wait_indexed()  # the relocation is applied after the ack
    return written


def _rotate(store: Store) -> None:
    pending = PendingCommit([], 0, store._writer.wakers.for_thread(), rotate=True)
    store._writer.submit(pending)
    assert pending.waker.event is not None
    pending.waker.event.wait()
    if pending.error is not None:
        raise pending.error


def compact(store: Store, dead_tenants: frozenset[str] = frozenset(), *, after_segment: int = 0,
            min_garbage: float = 0.25) -> CompactReport:
    """Reclaim sealed segments (numbered above *after_segment*) holding garbage: always when
    it includes records of *dead_tenants*, otherwise when garbage is at least *min_garbage*
    of the segment's records (rewriting a segment for one stale copy is not worth it).
    Blocking; one at a time per store."""
    forgotten = store._index.forget_tenants(dead_tenants) if dead_tenants else 0
    head = store._writer.head[0]
    if dead_tenants:
        store._index.make_durable()  # the forgotten rows leave the WAL file too
        if any(r.tenant in dead_tenants for r, _ in _records(store, head)):
            # The head segment holds records of a shredded tenant: seal it, so it is
            # compacted now rather than when it fills up.
            _rotate(store)
            head = store._writer.head[0]
    removed = freed = moved = moved_bytes = dropped = 0
    for number in list_segments(store._fs, store._dir):
        if number >= head:
            break
        if number <= after_segment:
            continue
        items = _records(store, number)
        live = [r for r, loc in items
                if r.tenant not in dead_tenants and store._index.location_of(r) == loc]
        shredded = any(r.tenant in dead_tenants for r, _ in items)
        if len(live) == len(items) or (
                not shredded and len(items) - len(live) < min_garbage * len(items)):
            continue  # nothing (worth) reclaiming here
        moved_bytes += _recommit(store, live) if live else 0
        store._index.make_durable()
        if store._index.references(number):
            raise StoreError(f"compaction: the index still points into segment {number}")
        _record_removal(store, number)
        path = os.path.join(store._dir, F.segment_name(number))
        size = os.path.getsize(path)
        with store._segments.exclusive():
            fd = store._read_fds.pop(number, None)
            if fd is not None:
                store._fs.close(fd)
            store._fs.unlink(path)
        store._fs.sync_dir(store._dir)
        removed += 1
        freed += size
        moved += len(live)
        dropped += len(items) - len(live)
    return CompactReport(removed, freed, moved, moved_bytes, dropped, forgotten, head - 1)


def _record_removal(store: Store, number: int) -> None:
    path = os.path.join(store._dir, REMOVED_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{number}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    store._fs.sync_dir(store._dir)
