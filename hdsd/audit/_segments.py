"""Segment files: appending with rotation, recovering the tail after a crash, pruning old
segments by retention, and reading durable records back (for the shipper).

Crash rule: frames are appended with ``write`` and made durable by ``fdatasync``; a crash can
leave the last frame incomplete (or complete in length but with unwritten bytes). Recovery cuts
exactly that last frame. Anything invalid *before* the last frame is not a crash but damage or
tampering: the writer refuses to start rather than write on top of it.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .._errors import AuditTampered
from . import _format as F
from ._chain import Broken, ChainChecker, parse_segment
from ._files import fsync_dir
from ._format import SegmentHeader
from ._verify import list_segments

__all__ = ["Reader", "SegmentWriter", "Tail", "prune_segments", "recover_tail"]

log = logging.getLogger("hdsd.audit")


@dataclass(frozen=True, slots=True)
class Tail:
    """The end of a log: last seq and chain hash, and the first seq not yet covered by a
    checkpoint (0 when everything is signed)."""

    seq: int
    hash: bytes
    unsigned_from: int
    path: Path | None  # the newest segment (None: no segment yet)
    size: int


def recover_tail(directory: Path, node: str | None, verify_key: bytes | None) -> Tail:
    """Find the end of the log in *directory*, cutting a torn last frame; raise
    :class:`AuditTampered` if the newest segment is damaged before its end."""
    segments = list_segments(directory)
    if not segments:
        return Tail(0, F.GENESIS, 0, None, 0)
    name_seq, path = segments[-1]
    data = path.read_bytes()
    try:
        parsed = parse_segment(data)
    except ValueError as exc:
        raise AuditTampered(f"{path}: bad segment header ({exc}); run `hdsd audit verify`",
                            seq=name_seq, segment=path.name) from None
    checker = ChainChecker(node, verify_key, parsed.header.first_seq - 1, parsed.header.prev_hash)
    good_end = F.HEADER.size
    for index, (offset, body, stored) in enumerate(parsed.frames):
        try:
            checker.feed(body, stored)
        except Broken as exc:
            if index != len(parsed.frames) - 1 or parsed.problem is not None:
                raise AuditTampered(f"{path}: seq {exc.seq}: {exc.reason}; run `hdsd audit "
                                    "verify`", seq=exc.seq, segment=path.name) from None
            good_end = offset  # a torn last frame: it was never acknowledged as durable
            break
        good_end = offset + F.LENGTH.size + len(body) + F.HASH_SIZE
    if good_end < len(data):
        log.warning("event=audit_torn_tail segment=%s cut_bytes=%d", path.name,
                    len(data) - good_end)
        with open(path, "r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return Tail(checker.seq, checker.hash, checker.unsigned_from, path, good_end)


class SegmentWriter:
    """Appends frames to the newest segment of one directory. One owner thread at a time."""

    def __init__(self, directory: Path, tail: Tail) -> None:
        self.directory = directory
        self._fd: int | None = None
        self.size = 0
        if tail.path is not None:
            self._fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self.size = tail.size

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def start_segment(self, first_seq: int, prev_hash: bytes) -> None:
        """Close the current segment and start a new one whose header chains to *prev_hash*."""
        self.close()
        path = self.directory / F.segment_name(first_seq)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, SegmentHeader(first_seq, prev_hash).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(self.directory)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.size = F.HEADER.size

    def append(self, data: bytes | bytearray) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self.size += len(data)

    def sync(self) -> None:
        if self._fd is not None:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _first_record_time(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(F.HEADER.size + F.LENGTH.size)
        if len(head) < F.HEADER.size + F.LENGTH.size:
            return None
        (n,) = F.LENGTH.unpack_from(head, F.HEADER.size)
        if n > F.MAX_BODY:
            return None
        try:
            return F.decode_body(f.read(n)).time_ns
        except ValueError:
            return None


def prune_segments(directory: Path, cutoff_ns: int, max_seq: int) -> int:
    """Delete the oldest whole segments whose every record is older than *cutoff_ns* and at most
    *max_seq* (records not yet shipped stay); never the newest. Return how many were deleted.

    A segment's records are all older than the first record of the next segment, so that one
    record's time decides. The next segment's header keeps the chain verifiable after the cut.
    """
    segments = list_segments(directory)
    removed = 0
    for (_, path), (next_seq, next_path) in itertools.pairwise(segments):
        newest = _first_record_time(next_path)
        if newest is None or newest >= cutoff_ns or next_seq - 1 > max_seq:
            break
        path.unlink()
        removed += 1
        log.info("event=audit_segment_pruned segment=%s", path.name)
    if removed:
        fsync_dir(directory)
    return removed


@dataclass(slots=True)
class _Position:
    seq: int
    path: Path
    offset: int


class Reader:
    """Reads durable record bodies in order from a log directory, remembering where it stopped
    so that following a growing log costs only the new bytes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pos: _Position | None = None  # where the last batch read ended
        self._start: _Position | None = None  # ... and where it began

    def read_after(self, after_seq: int, until_seq: int, limit: int, max_bytes: int
                   ) -> tuple[int, bytes, list[bytes]]:
        """Bodies of records ``after_seq+1 .. until_seq`` (at most *limit* and about *max_bytes*),
        and ``(seq, hash)`` of the record before the first one returned. When *after_seq* was
        pruned, start at the oldest record kept."""
        pos = self._pos if self._pos is not None and self._pos.seq == after_seq else None
        if pos is None and self._start is not None and self._start.seq == after_seq:
            # The last batch was not taken (the other site is down, the shipper retries every
            # interval): read it again from where it began. Locating it would parse the whole
            # segment — up to its 64 MiB, every half second, for as long as the site is down.
            pos = self._start
        if pos is None or not pos.path.exists():
            pos = self._locate(after_seq)
            if pos is None:
                return after_seq, b"", []
        prev_seq = pos.seq
        prev_hash = b""
        bodies: list[bytes] = []
        size = 0
        with open(pos.path, "rb") as f:
            if pos.offset == F.HEADER.size:
                prev_hash = SegmentHeader.decode(f.read(F.HEADER.size)).prev_hash
            else:
                f.seek(pos.offset - F.HASH_SIZE)
                prev_hash = f.read(F.HASH_SIZE)
            offset = pos.offset
            seq = pos.seq
            while seq < until_seq and len(bodies) < limit and size < max_bytes:
                f.seek(offset)
                head = f.read(F.LENGTH.size)
                if len(head) < F.LENGTH.size:
                    nxt = self.directory / F.segment_name(seq + 1)
                    if bodies or not nxt.exists():
                        break
                    # The segment ended: continue in the next one (a batch never spans two, so
                    # each batch's prev hash is a plain stored one).
                    self._pos = _Position(seq, nxt, F.HEADER.size)
                    return self.read_after(after_seq, until_seq, limit, max_bytes)
                (n,) = F.LENGTH.unpack_from(head)
                body = f.read(n)
                f.read(F.HASH_SIZE)
                bodies.append(body)
                size += n
                seq += 1
                offset += F.LENGTH.size + n + F.HASH_SIZE
        self._start = pos
        self._pos = _Position(seq, pos.path, offset)
        return prev_seq, prev_hash, bodies

    def _locate(self, after_seq: int) -> _Position | None:
        segments = list_segments(self.directory)
        if not segments:
            return None
        candidates = [(s, p) for s, p in segments if s <= after_seq + 1]
        first_seq, path = candidates[-1] if candidates else segments[0]
        data = path.read_bytes()
        parsed = parse_segment(data)
        seq, offset = first_seq - 1, F.HEADER.size
        for frame_offset, body, _ in parsed.frames:
            if seq >= after_seq:
                break
            seq += 1
            offset = frame_offset + F.LENGTH.size + len(body) + F.HASH_SIZE
        return _Position(seq, path, offset)
