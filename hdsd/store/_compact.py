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

:meth:`Store.compact <hdsd.store.Store.compact>` is the entry point; it hands :func:`compact`
the parts it works on (directory, file system, index, log writer, and how to delete a segment
no read is using). Every file operation goes through the store's :class:`FileSystem`, so the
fault-injecting file systems of the tests reach compaction too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .._errors import StoreError
from . import _format as F
from ._fs import FileSystem
from ._index import Index, Location
from ._log import Frame, scan_segment
from ._records import ChunkRecord, StoredRecord, decode_record, encode_record
from ._recovery import REMOVED_NAME, _with_map, list_segments
from ._writer import LogWriter

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

    def enter_now(self) -> bool:
        """:meth:`reading`'s entry for the event loop, which must not wait: False (not
        entered) while a compaction holds the segments; else :meth:`leave` once read."""
        with self._cond:  # its lock is held only for these counters, never while waiting
            if self._closing:
                return False
            self._readers += 1
        return True

    def leave(self) -> None:
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


def _records(fs: FileSystem, directory: str,
             number: int) -> list[tuple[StoredRecord, Location]]:
    out: list[tuple[StoredRecord, Location]] = []

    def scan(buf: object, size: int) -> None:
        def on_batch(frames: list[Frame]) -> None:
            for f in frames:
                out.append((decode_record(f.kind, f.body), Location(number, f.offset, f.size)))
        scan_segment(buf, F.SEGMENT_HEADER_SIZE, size, on_batch)  # type: ignore[arg-type]

    _with_map(fs, os.path.join(directory, F.segment_name(number)), scan)
    return out


def _recommit(writer: LogWriter, records: list[StoredRecord]) -> int:
    """Commit *records* again at the head, moving the index to the new copies."""
    written = 0
    batch: list[StoredRecord] = []
    size = 0
    for i, record in enumerate(records):
        batch.append(record)
        size += len(record.payload) if isinstance(record, ChunkRecord) else 256
        if size >= _BATCH_BYTES or i == len(records) - 1:
            encoded = [encode_record(r) for r in batch]
            nbytes = sum(F.FRAME_HEADER_SIZE + e.size for e in encoded)
            writer.commit_blocking(encoded, nbytes, relocate=True)
            written += nbytes
            batch, size = [], 0
    writer.wait_indexed()  # the relocation is applied after the ack
    return written


def compact(*, directory: str, fs: FileSystem, index: Index, writer: LogWriter,
            delete_segment: Callable[[int], None],
            dead_tenants: frozenset[str] = frozenset(), after_segment: int = 0,
            min_garbage: float = 0.25) -> CompactReport:
    """Reclaim sealed segments (numbered above *after_segment*) holding garbage: always when
    it includes records of *dead_tenants*, otherwise when garbage is at least *min_garbage*
    of the segment's records (rewriting a segment for one stale copy is not worth it).
    Blocking; one at a time per store."""
    forgotten = index.forget_tenants(dead_tenants) if dead_tenants else 0
    head = writer.head[0]
    if dead_tenants:
        index.make_durable()  # the forgotten rows leave the WAL file too
        if any(r.tenant in dead_tenants for r, _ in _records(fs, directory, head)):
            # The head segment holds records of a shredded tenant: seal it, so it is
            # compacted now rather than when it fills up.
            writer.commit_blocking([], 0, rotate=True)
            head = writer.head[0]
    removed = freed = moved = moved_bytes = dropped = 0
    for number in list_segments(fs, directory):
        if number >= head:
            break
        if number <= after_segment:
            continue
        items = _records(fs, directory, number)
        live = [r for r, loc in items
                if r.tenant not in dead_tenants and index.location_of(r) == loc]
        shredded = any(r.tenant in dead_tenants for r, _ in items)
        if len(live) == len(items) or (
                not shredded and len(items) - len(live) < min_garbage * len(items)):
            continue  # nothing (worth) reclaiming here
        moved_bytes += _recommit(writer, live) if live else 0
        index.make_durable()
        if index.references(number):
            raise StoreError(f"compaction: the index still points into segment {number}")
        fs.append(os.path.join(directory, REMOVED_NAME), f"{number}\n".encode())
        fs.sync_dir(directory)
        size = os.path.getsize(os.path.join(directory, F.segment_name(number)))
        delete_segment(number)
        fs.sync_dir(directory)
        removed += 1
        freed += size
        moved += len(live)
        dropped += len(items) - len(live)
    return CompactReport(removed, freed, moved, moved_bytes, dropped, forgotten, head - 1)
