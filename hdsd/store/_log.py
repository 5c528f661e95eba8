"""The write-ahead log: the on-disk format specification, framing and scanning.

The log IS the data; the SQLite index is a cache of it that recovery can rebuild.

Files
    A store directory holds numbered segment files ``<16-digit number>.seg`` (1, 2, ...), the
    index ``index.sqlite3`` (+ its WAL files), a ``LOCK`` file, ``removed-segments`` once
    compaction deleted a segment, and possibly forensic files: ``<segment>.torn-<offset>``
    (a torn tail cut at open) and ``<segment>.damaged-<offset>`` (a range salvage skipped).
    A segment is created as ``<name>.seg.tmp``, preallocated (``posix_fallocate``) to the
    segment size, given its header, fdatasync'd, renamed to its final name, and the directory
    fsynced: a final-named segment always has a durable header. A leftover ``.seg.tmp`` holds
    nothing durable and is removed at open.

Segment header (32 bytes, ``_format.SEGMENT_HEADER``)
    magic ``HDSDLOG\\0`` | u16 format version (2) | u16 flags (0) | u32 reserved (0) |
    u64 segment number | u64 xxh3-64 of the preceding 24 bytes. Little-endian throughout.
    Format 1 (before names were sealed) is refused at open with one line naming
    ``hdsd store migrate``, which rewrites it (``_migrate``).

Record frame (24-byte header + body)
    ``\\xc3REC`` sync | u32 body length | u8 kind | u8 flags | u16 reserved (0) |
    u32 batch start | u64 checksum, then the msgpack body (``hdsd._packing``).
    *checksum* = xxh3-64(header bytes [4:16) ++ u64 xxh3-64(body)); it covers every field but the
    sync word. *batch start* is the segment offset of the first frame of the batch the frame
    belongs to; flag ``COMMIT`` (0x01) marks the last frame of a batch. Frames are contiguous
    after the header; the first bytes that do not form a valid frame end the segment's log.

Record kinds
    1 chunk ``{t: tenant, c: 32-byte chunk id, p: sealed payload}``;
    2 version: ``Version.to_wire()`` without bucket ``b``, key ``k`` and metadata ``d``, plus
    ``g``: the 16-byte keyed id of the bucket, ``y``: the 16-byte keyed id of (bucket, key),
    ``e``: ``[bucket, key, metadata]`` sealed under the tenant's key (XChaCha20-Poly1305,
    associated data: tenant, ``g``, ``y``, hlc, node; see ``_sealed``). No name is in clear
    in the log, and shredding the tenant's key makes every such record's names unreadable
    at once, in every segment, with nothing to rewrite. Tenant, HLC, node, request id,
    size, keyed content hash, chunk ids, tombstone flag, and a purge record's target ``p``
    (``[hlc, node]`` of the version of the same key it deletes for good; absent otherwise)
    stay clear (none names a patient;
    recovery and compaction need them without the key).
    Kind 0 is invalid (zero-filled space is never a record).
    3 hint, 4 tenant key, 5 audit, 6 dead-chunk marker are reserved: a reader that meets a kind it
    does not know refuses to open rather than skip it.

Commit rule
    One log-writer thread takes every queued commit, frames them as ONE batch (one ``pwrite`` at
    the head of the current segment, ``COMMIT`` on the last frame), issues ONE ``fdatasync``,
    wakes the waiters, then applies the batch to the index in one SQLite transaction that also
    records the end of the batch (the *applied position*: segment, offset, and the offset of
    its last frame) — half a millisecond later when its waiters were parked on it (they run
    first), once its request has ended when a node serves that one request alone (at most
    5 ms later), and at once when a read asks; batches acknowledged meanwhile share the
    transaction.
    Until that transaction is done every read of the store waits for it, so
    no read made after an acknowledgement misses the acknowledged records; if it fails, the
    store stops and reads refuse (a reopen replays the batch). A batch never spans segments:
    if it does not fit, a new segment is created first (a batch larger than a whole segment
    grows that segment past its preallocation). So: a commit is atomic (all its frames are in
    one batch) and an acknowledged batch is always followed by the applied position or by
    records the index has not seen yet.

What a crash can leave behind, and how ``recover`` handles it
    * Index behind the log (its last transactions were not yet durable, or it was deleted):
      every batch after the applied position is replayed; applying is idempotent (INSERT OR
      IGNORE keyed by chunk id / version identity), so replay is exactly-once in effect.
    * A torn last batch (power cut during its write; it was never acknowledged): in the LAST
      segment, after the last complete batch (ending at offset *T*), zeros, a partial frame,
      garbage, or frames of that same batch without its ``COMMIT`` frame. These bytes are copied
      to ``<segment>.torn-<T>``, the segment is cut back to *T* (truncated and preallocated
      again) and the cut is fsynced. Pages of a torn batch may reach the disk in any order, so
      valid frames of the SAME batch (batch start == *T*) after a bad one are still a torn tail.
    * Preallocated zero space after the last complete batch: the normal end, nothing to do.
    * Damage before the tail: a bad frame followed anywhere in the segment by a valid frame of a
      LATER batch (batch start > *T*; only a later batch can exist after an fdatasync'd one), any
      bad bytes before the end of a segment that is not the last, a bad segment header, or a log
      that ends before the index's applied position, or whose frame there fails its checksum
      (the disk lost acknowledged data): :class:`CorruptLogError` naming segment and offset.
      Never skipped silently: the store refuses to open. Opened with ``salvage`` (node
      setting ``on_corrupt_log = "repair"``: the operator's choice), a damaged range that
      later batches follow, or bad bytes at the end of a segment that is not the last, is
      copied to
      ``<segment>.damaged-<offset>`` and skipped; its records are lost on this node, listed in
      ``statistics().salvaged``, and come back from a replica (repair). A missing segment or a
      log shorter than the index's applied position still refuses.
    Damage inside already-indexed data is not found at open (that would read every byte); reads
    verify the checksum of what they return, and ``Store.verify_log`` / ``Store.open(...,
    verify=True)`` scan all of it.

Write errors
    ``fdatasync`` failure, or any write error but ENOSPC: fail-stop (never retried: after a failed
    fsync the page cache may already have dropped the data). ENOSPC: the batch gets
    :class:`DiskFullError`, the segment is truncated back to the last durable position and that
    truncation fsynced, so no stale bytes remain; the store keeps serving reads and accepts later
    writes (which succeed once space is freed). If that clean-up itself fails, fail-stop.

Compaction (``_compact``; run after a tenant is crypto-shredded)
    Segments other than the last are immutable. Compaction rewrites a sealed segment holding
    garbage — records of shredded tenants, copies the index no longer points to — by
    committing its live records again at the head as ordinary batches (the index is moved to
    the new copies after their fsync), checkpointing the index durably, appending the
    segment's number to ``removed-segments`` (fsynced) and deleting the file. Recovery accepts
    gaps listed there and nowhere else. Reads take a shared gate around their ``pread``; a
    delete takes it alone, and a read whose segment vanished after its index lookup looks the
    record up again. With dead tenants, compaction first drops their index rows (SQLite
    ``secure_delete``, WAL truncated) and, if the head segment holds records of theirs,
    starts a new segment (a rotation, no record written) so that one is sealed and compacted
    in the same run: no record of a shredded tenant stays in any file. An index rebuilt from
    the log after compaction does not resurrect what was dropped. The record kind 6
    (dead-chunk marker) stays reserved for deleting live chunks for good.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .._errors import CorruptLogError, IntegrityError
from . import _format as F
from ._records import EncodedRecord

__all__ = ["ByteSource", "Frame", "TailVerdict", "check_frame_view", "classify_tail",
           "frame_batch", "frame_batch_parts", "next_batch_start", "parse_frame",
           "scan_segment"]


class ByteSource(Protocol):
    """What scanning needs of a segment's bytes: ``bytes`` or a read-only ``mmap``."""

    def __getitem__(self, index: slice, /) -> bytes: ...

    def find(self, sub: bytes, start: int, end: int, /) -> int: ...


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int
    kind: int
    flags: int
    batch_start: int
    body: bytes

    @property
    def size(self) -> int:
        return F.FRAME_HEADER_SIZE + len(self.body)

    @property
    def end(self) -> int:
        return self.offset + self.size


def frame_batch(records: Sequence[EncodedRecord], batch_start: int) -> tuple[bytes, list[int]]:
    """The bytes of one batch written at *batch_start*, and each frame's offset."""
    parts, offsets = frame_batch_parts(records, batch_start)
    return b"".join(parts), offsets


_OWN_PART = 64 << 10


def frame_batch_parts(records: Sequence[EncodedRecord], batch_start: int
                      ) -> tuple[list[bytes], list[int]]:
    """:func:`frame_batch` as pieces to write in order (one ``pwritev``): a large record's
    body is a piece of its own, not copied into the batch (a rebuild's batch is megabytes of
    chunks); headers and small bodies are joined between them."""
    parts: list[bytes] = []
    small: list[bytes] = []
    offsets: list[int] = []
    pos = batch_start
    last = len(records) - 1
    for i, rec in enumerate(records):
        flags = F.FLAG_COMMIT if i == last else 0
        size = rec.size
        header = F.FRAME_HEADER.pack(F.FRAME_SYNC, size, rec.kind, flags, 0, batch_start, 0)
        checksum = F.frame_checksum(header[F.CHECKSUMMED_HEADER], rec.body_digest)
        small.append(header[:-8] + F.U64.pack(checksum))
        if len(rec.body) >= _OWN_PART:
            parts.append(b"".join(small))
            parts.append(rec.body)
            small = []
        else:
            small.append(rec.body)
        if rec.tail:
            parts.append(b"".join(small))
            parts.append(rec.tail)
            small = []
        offsets.append(pos)
        pos += F.FRAME_HEADER_SIZE + size
    if small:
        parts.append(b"".join(small))
    return parts, offsets


def parse_frame(buf: ByteSource, pos: int, end: int, batch_start: int | None) -> Frame | None:
    """The valid frame at *pos* in ``buf[:end]``, or None.

    With *batch_start* given, a frame claiming another batch is not valid here.
    """
    if pos + F.FRAME_HEADER_SIZE > end:
        return None
    header = buf[pos:pos + F.FRAME_HEADER_SIZE]
    sync, length, kind, flags, reserved, start, checksum = F.FRAME_HEADER.unpack(header)
    if sync != F.FRAME_SYNC or kind == 0 or reserved or length > F.MAX_BODY_BYTES:
        return None
    if batch_start is not None and start != batch_start:
        return None
    body_end = pos + F.FRAME_HEADER_SIZE + length
    if body_end > end:
        return None
    body = buf[pos + F.FRAME_HEADER_SIZE:body_end]
    if F.frame_checksum(header[F.CHECKSUMMED_HEADER], F.digest(body)) != checksum:
        return None
    return Frame(pos, kind, flags, start, body)


def check_frame(segment: str, offset: int, data: bytes) -> Frame:
    """Verify *data*, the bytes of one frame read from *segment* at *offset*."""
    frame = parse_frame(data, 0, len(data), None)
    if frame is None or frame.size != len(data):
        raise IntegrityError(f"log record at {segment}:{offset} failed its checksum")
    return Frame(offset, frame.kind, frame.flags, frame.batch_start, frame.body)


def check_frame_view(segment: str, offset: int, data: bytes) -> tuple[int, memoryview]:
    """:func:`check_frame` for a read that only decodes the body: ``(kind, body)`` with the
    body a view of *data* — a chunk read copies its megabyte once (out of the record), not
    also out of the frame."""
    size = F.FRAME_HEADER_SIZE
    if len(data) >= size:
        header = data[:size]
        sync, length, kind, _, reserved, _, checksum = F.FRAME_HEADER.unpack(header)
        if (sync == F.FRAME_SYNC and kind != 0 and not reserved and size + length == len(data)):
            body = memoryview(data)[size:]
            if F.frame_checksum(header[F.CHECKSUMMED_HEADER], F.digest(body)) == checksum:
                return kind, body
    raise IntegrityError(f"log record at {segment}:{offset} failed its checksum")


@dataclass(frozen=True, slots=True)
class ScanResult:
    committed_end: int  # T: end of the last complete batch
    stop: int  # P: first offset that does not continue a valid frame sequence
    batches: int


def scan_segment(buf: ByteSource, start: int, end: int,
                 on_batch: Callable[[list[Frame]], None]) -> ScanResult:
    """Walk complete batches from *start* (a batch boundary), calling *on_batch* for each."""
    pos = committed = start
    pending: list[Frame] = []
    batches = 0
    while True:
        frame = parse_frame(buf, pos, end, committed)
        if frame is None:
            break
        pending.append(frame)
        pos = frame.end
        if frame.flags & F.FLAG_COMMIT:
            on_batch(pending)
            pending = []
            committed = pos
            batches += 1
    return ScanResult(committed, pos, batches)


@dataclass(frozen=True, slots=True)
class TailVerdict:
    """What follows the last complete batch: nothing (``torn_end == committed_end``) or a torn
    tail ``[committed_end, torn_end)`` to cut; damage raises instead."""

    committed_end: int
    torn_end: int


def classify_tail(buf: ByteSource, scan: ScanResult, end: int, *, segment: str,
                  last_segment: bool, clean: bool = False) -> TailVerdict:
    """Decide whether the bytes after ``scan.committed_end`` are a torn tail or damage.

    *clean*: the store was closed cleanly with nothing written past ``scan.committed_end``, so
    the (possibly large) preallocated space after it need not be read to prove it is zeros.
    """
    t = scan.committed_end
    if clean and scan.stop == t:
        return TailVerdict(t, t)
    torn_end = _last_nonzero(buf, t, end)
    if torn_end == t:
        return TailVerdict(t, t)
    where = scan.stop if scan.stop > t else t
    if not last_segment:
        raise CorruptLogError(
            f"log segment {segment} is damaged at offset {where}: a later segment exists, so "
            "these bytes were acknowledged; repair from the other site",
            segment=segment, offset=where)
    later = _find_later_batch(buf, scan.stop + 1, end, t)
    if later is not None:
        raise CorruptLogError(
            f"log segment {segment} is damaged at offset {where} (valid records follow at "
            f"{later}); repair from the other site",
            segment=segment, offset=where)
    return TailVerdict(t, torn_end)


def _find_later_batch(buf: ByteSource, pos: int, end: int, committed_end: int) -> int | None:
    while True:
        pos = buf.find(F.FRAME_SYNC, pos, end)
        if pos < 0:
            return None
        frame = parse_frame(buf, pos, end, None)
        if frame is not None and frame.batch_start > committed_end:
            return pos
        pos += 1


def next_batch_start(buf: ByteSource, pos: int, end: int, committed_end: int) -> int | None:
    """The offset, at or after *pos*, of the first frame of a complete later batch (one that
    starts after *committed_end*), or None: where a salvaging recovery resumes."""
    while True:
        found = _find_later_batch(buf, pos, end, committed_end)
        if found is None:
            return None
        first = parse_frame(buf, found, end, None)
        assert first is not None
        start = first.batch_start
        if start > committed_end and parse_frame(buf, start, end, start) is not None:
            return start
        pos = found + 1


def _last_nonzero(buf: ByteSource, start: int, end: int) -> int:
    """The end of the last non-zero byte in ``buf[start:end]`` (*start* if all zero)."""
    last = start
    pos = start
    while pos < end:
        chunk = buf[pos:min(end, pos + _WINDOW)]
        if chunk != _ZEROS[: len(chunk)]:  # a memcmp: most windows are preallocated zeros
            last = pos + len(chunk.rstrip(b"\0"))
        pos += _WINDOW
    return last


_WINDOW = 1 << 20
_ZEROS = bytes(_WINDOW)
