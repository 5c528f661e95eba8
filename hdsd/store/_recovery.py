"""Recovery at open (replay past the applied position, cut a torn tail) and full-log checks.

The rules are specified in the ``_log`` module docstring; this module applies them.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import CorruptLogError, IntegrityError, StoreError
from . import _format as F
from ._fs import FileSystem
from ._index import AppliedPosition, Index, Location
from ._log import (
    ByteSource,
    Frame,
    _last_nonzero,
    check_frame,
    classify_tail,
    next_batch_start,
    scan_segment,
)
from ._records import StoredRecord, decode_record

__all__ = ["REMOVED_NAME", "Recovered", "list_segments", "recover", "removed_segments",
           "verify_log"]

_APPLY_EVERY = 5000  # records per index transaction during replay


@dataclass(frozen=True, slots=True)
class Recovered:
    head_segment: int  # 0: no segment yet
    head_offset: int
    replayed_records: int
    torn_tails: tuple[str, ...]  # forensic files written
    # Damaged ranges skipped by a salvaging recovery: "segment:start-end" each; their records
    # are lost here and must come back from another replica (anti-entropy, scrub).
    salvaged: tuple[str, ...] = ()


REMOVED_NAME = "removed-segments"  # numbers of segments compaction deleted, one per line


def removed_segments(directory: str) -> set[int]:
    """Segments compaction deleted on purpose: gaps there are expected."""
    try:
        with open(os.path.join(directory, REMOVED_NAME), encoding="ascii") as f:
            return {int(line) for line in f if line.strip()}
    except FileNotFoundError:
        return set()


def list_segments(fs: FileSystem, directory: str) -> list[int]:
    numbers = [F.parse_segment_name(name) for name in fs.listdir(directory)]
    return sorted(n for n in numbers if n is not None)


def _check_header(buf: ByteSource, size: int, number: int, name: str) -> None:
    if size < F.SEGMENT_HEADER_SIZE:
        raise CorruptLogError(f"log segment {name} is shorter than its header",
                              segment=name, offset=0)
    raw = buf[:F.SEGMENT_HEADER_SIZE]
    magic, version, _flags, _res, stored_number, checksum = F.SEGMENT_HEADER.unpack(raw)
    if magic != F.SEGMENT_MAGIC or F.digest(raw[:24]) != checksum or stored_number != number:
        raise CorruptLogError(f"log segment {name} has a damaged header", segment=name, offset=0)
    if version != F.FORMAT_VERSION:
        raise StoreError(f"log segment {name} uses format {version}; this hdsd reads "
                         f"format {F.FORMAT_VERSION}")


def check_format(fs: FileSystem, directory: str) -> None:
    """Refuse a store written by an older hdsd before touching it: format 1 kept bucket and
    key names and metadata in clear; ``hdsd store migrate`` rewrites it sealed."""
    numbers = list_segments(fs, directory)
    if not numbers:
        return
    name = F.segment_name(numbers[0])
    fd = fs.open_read(os.path.join(directory, name))
    try:
        raw = fs.pread(fd, F.SEGMENT_HEADER_SIZE, 0)
    finally:
        fs.close(fd)
    if len(raw) == F.SEGMENT_HEADER_SIZE:
        magic, version = F.SEGMENT_HEADER.unpack(raw)[:2]
        if magic == F.SEGMENT_MAGIC and version in F.MIGRATABLE_VERSIONS:
            raise StoreError(
                f"the store in {directory} has log format {version} (names in clear); with "
                "the node stopped, run: hdsd store migrate --config NODE.toml")


def _with_map(fs: FileSystem, path: str, use: Callable[[ByteSource, int], None]) -> None:
    fd = fs.open_read(path)
    try:
        size = fs.size(fd)
        if size == 0:
            use(b"", 0)
            return
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
            use(buf, size)
    finally:
        fs.close(fd)


def _decode(name: str, frame: Frame) -> StoredRecord:
    if frame.kind not in F.KNOWN_KINDS:
        raise StoreError(f"log segment {name} holds a record of kind {frame.kind} at offset "
                         f"{frame.offset}, unknown to this version of hdsd; upgrade it")
    try:
        return decode_record(frame.kind, frame.body)
    except IntegrityError as exc:
        raise CorruptLogError(f"log segment {name}: undecodable record at offset "
                              f"{frame.offset}: {exc}", segment=name, offset=frame.offset) from None


def _check_applied(fs: FileSystem, directory: str, numbers: list[int],
                   applied: AppliedPosition) -> None:
    """The index says the log reaches *applied*: make sure the log still does."""
    name = F.segment_name(applied.segment)
    if applied.segment not in numbers:
        raise CorruptLogError(f"log segment {name} is missing but the index refers to it",
                              segment=name, offset=0)
    fd = fs.open_read(os.path.join(directory, name))
    try:
        size = fs.size(fd)
        if size < applied.offset:
            raise CorruptLogError(
                f"log segment {name} ends at {size} but acknowledged records reach "
                f"{applied.offset}: the disk lost data; repair from the other site",
                segment=name, offset=size)
        data = fs.pread(fd, applied.offset - applied.last_frame, applied.last_frame)
    finally:
        fs.close(fd)
    try:
        frame = check_frame(name, applied.last_frame, data)
    except IntegrityError:
        frame = None
    if frame is None or not frame.flags & F.FLAG_COMMIT:
        raise CorruptLogError(
            f"log segment {name}: the last acknowledged record (offset {applied.last_frame}) "
            "is damaged or gone; repair from the other site",
            segment=name, offset=applied.last_frame)


def recover(fs: FileSystem, directory: str, index: Index, segment_bytes: int, *,
            salvage: bool = False) -> Recovered:
    """Bring the index up to the end of the log, cutting a torn tail; see ``_log``.

    With *salvage*, damage met while replaying (a bad range followed by later batches, or
    bad bytes at the end of a segment that is not the last) is copied to
    ``<segment>.damaged-<offset>`` and skipped instead of raising :class:`CorruptLogError`;
    the records in it are lost HERE and must be fetched from a replica. Damage the index
    already covers is not met at open (reads and scrub find it); a missing segment or a log
    shorter than the index's applied position still raises."""
    for entry in fs.listdir(directory):
        if entry.endswith(F.SEGMENT_TMP_SUFFIX):
            fs.unlink(os.path.join(directory, entry))
            fs.sync_dir(directory)
    numbers = list_segments(fs, directory)
    removed = removed_segments(directory)
    for previous, number in itertools.pairwise(numbers):
        for gap in range(previous + 1, number):
            if gap not in removed:
                name = F.segment_name(gap)
                raise CorruptLogError(f"log segment {name} is missing", segment=name, offset=0)
    applied = index.applied()
    clean = index.was_closed_cleanly()
    if applied.segment:
        _check_applied(fs, directory, numbers, applied)
    replayed = 0
    torn: list[str] = []
    salvaged: list[str] = []
    head = (0, 0)
    for number in numbers:
        if number < applied.segment:
            continue
        start = applied.offset if number == applied.segment else F.SEGMENT_HEADER_SIZE
        replay = _Replay(index, number, start, last=number == numbers[-1],
                         clean=clean and number == applied.segment == numbers[-1],
                         salvage=salvage)
        path = os.path.join(directory, replay.name)
        _with_map(fs, path, replay.run)
        for begin, end in replay.damaged:
            fs.write_new_file(f"{path}{F.DAMAGED_INFIX}{begin}", replay.damaged_bytes[begin])
            salvaged.append(f"{replay.name}:{begin}-{end}")
        replayed += replay.records
        if replay.torn_end > replay.committed_end:
            torn.append(_cut_tail(fs, path, replay.committed_end, replay.torn_end,
                                  segment_bytes))
        head = (number, replay.committed_end)
    return Recovered(head[0], head[1], replayed, tuple(torn), tuple(salvaged))


class _Replay:
    """Replays one segment from a batch boundary into the index."""

    def __init__(self, index: Index, number: int, start: int, *, last: bool,
                 clean: bool, salvage: bool = False) -> None:
        self.index = index
        self.salvage = salvage
        self.damaged: list[tuple[int, int]] = []
        self.damaged_bytes: dict[int, bytes] = {}
        self.clean = clean
        self.number = number
        self.name = F.segment_name(number)
        self.start = start
        self.last = last
        self.items: list[tuple[StoredRecord, Location]] = []
        self.records = 0
        self.committed_end = self.torn_end = start
        self._last: Frame | None = None

    def run(self, buf: ByteSource, size: int) -> None:
        _check_header(buf, size, self.number, self.name)
        pos = self.start
        while True:
            result = scan_segment(buf, pos, size, self._on_batch)
            self._flush()
            try:
                verdict = classify_tail(buf, result, size, segment=self.name,
                                        last_segment=self.last, clean=self.clean)
            except CorruptLogError:
                if not self.salvage:
                    raise
                t = result.committed_end
                resume = next_batch_start(buf, result.stop + 1, size, t)
                end = resume if resume is not None else _last_nonzero(buf, t, size)
                self.damaged.append((t, end))
                self.damaged_bytes[t] = buf[t:end]
                if resume is None:  # bad to the end of a segment that is not the last
                    self.committed_end = self.torn_end = t
                    return
                pos = resume
                continue
            self.committed_end, self.torn_end = verdict.committed_end, verdict.torn_end
            return

    def _on_batch(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.items.append((_decode(self.name, frame),
                               Location(self.number, frame.offset, frame.size)))
        self._last = frames[-1]
        if len(self.items) >= _APPLY_EVERY:
            self._flush()

    def _flush(self) -> None:
        last = self._last
        if self.items and last is not None:
            self.index.apply(self.items, AppliedPosition(self.number, last.end, last.offset))
            self.records += len(self.items)
            self.items = []


def _cut_tail(fs: FileSystem, path: str, cut: int, torn_end: int, segment_bytes: int) -> str:
    """Copy ``[cut, torn_end)`` beside the segment, then cut the segment back to *cut*, durably."""
    forensic = f"{path}{F.TORN_INFIX}{cut}"
    k = 1
    while os.path.exists(forensic):  # the same cut twice (crash during recovery): keep both
        forensic = f"{path}{F.TORN_INFIX}{cut}.{k}"
        k += 1
    fd = fs.open_write(path)
    try:
        fs.write_new_file(forensic, fs.pread(fd, torn_end - cut, cut))
        fs.truncate(fd, cut)
        try:
            fs.preallocate(fd, cut, segment_bytes - cut)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        fs.fdatasync(fd)
    finally:
        fs.close(fd)
    return forensic


def verify_log(fs: FileSystem, directory: str, head: tuple[int, int]) -> int:
    """Check every frame of every segment up to *head*; return how many batches were checked.

    Raises :class:`CorruptLogError` at the first damage (nothing may follow the end of the log
    in a segment but zeros, except past *head* in the head segment, where the writer works).
    """
    batches = 0
    for number in list_segments(fs, directory):
        if number > head[0]:
            break
        check = _Check(number, head)
        _with_map(fs, os.path.join(directory, check.name), check.run)
        batches += check.batches
    return batches


class _Check:
    def __init__(self, number: int, head: tuple[int, int]) -> None:
        self.number = number
        self.name = F.segment_name(number)
        self.head = head
        self.batches = 0

    def run(self, buf: ByteSource, size: int) -> None:
        _check_header(buf, size, self.number, self.name)
        end = self.head[1] if self.number == self.head[0] else size
        result = scan_segment(buf, F.SEGMENT_HEADER_SIZE, end, lambda frames: None)
        classify_tail(buf, result, end, segment=self.name, last_segment=False)
        self.batches = result.batches
