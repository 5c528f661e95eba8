"""Offline verification of one node's audit log (its own directory or a shipped copy)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from .._errors import AuditTampered, ConfigError
from . import _format as F
from ._chain import Broken, ChainChecker, parse_segment
from ._format import AuditRecord

__all__ = ["RESUMED_OP", "VerifyReport", "list_segments", "read_records", "verify_log"]

#: The op of the record a node writes first when it resumed its chain after the tail the other
#: site's copy holds (its own log was lost with its disk; it kept its signing key).
RESUMED_OP = "audit_resumed"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a successful verification covered.

    ``signed_seq`` is the seq of the last checkpoint (0: none yet): every record up to it is
    proven unaltered by a signature. Records after it (``unsigned_records``, seq
    ``signed_seq + 1 .. last_seq``) chain correctly from it but no checkpoint covers them
    yet: an *unsigned tail*, normal on a live node (a checkpoint follows within
    ``checkpoint_s``) and on a copy whose origin has not shipped its next checkpoint.
    ``torn_bytes``: an incomplete record at the very end of the newest segment (being
    written, or cut by a crash: the node's next start cuts it).
    """

    node: str
    first_seq: int  # > 1 when older segments were removed by retention
    last_seq: int
    records: int
    checkpoints: int
    segments: int
    first_prev_hash: bytes
    last_hash: bytes
    last_time_ns: int
    signed_seq: int = 0
    unsigned_records: int = 0
    unsigned_since_ns: int = 0  # time of the first unsigned record (0: none)
    torn_bytes: int = 0
    # Where the node resumed its chain after losing its own log (a replaced disk, the same
    # signing key): (seq of the resume record, what it says). See hdsd.audit.RESUMED_OP.
    resumed: tuple[tuple[int, str], ...] = ()

    @property
    def fully_signed(self) -> bool:
        return self.unsigned_records == 0 and self.torn_bytes == 0


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """``(first seq from the name, path)`` of every segment in *directory*, in seq order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(seq, directory / n) for n in names if (seq := F.segment_seq(n)) is not None]
    return sorted(found)


def verify_log(directory: Path, verify_key: bytes | None) -> VerifyReport:
    """Check every segment in *directory*: seq continuity across segments, chain hashes and
    checkpoint signatures against *verify_key* (None: signatures unchecked — callers say so).
    Raise :class:`AuditTampered` naming the first broken record.

    A tail after the last checkpoint that chains correctly is not tampering (a live node signs
    it within seconds): the report says how many records it holds (``unsigned_records``).
    Works on a live node: a segment deleted by retention while reading is read again."""
    for attempt in range(3):
        try:
            return _verify(directory, verify_key)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _verify(directory: Path, verify_key: bytes | None) -> VerifyReport:
    segments = list_segments(directory)
    if not segments:
        raise ConfigError(f"{directory}: no audit segments here")
    checker: ChainChecker | None = None
    first_seq = 0
    first_prev = F.GENESIS
    torn = 0
    unsigned_since = 0
    resumed: list[tuple[int, str]] = []
    for index, (name_seq, path) in enumerate(segments):
        newest = index == len(segments) - 1
        data = path.read_bytes()
        try:
            parsed = parse_segment(data)
        except ValueError as exc:
            seq = checker.seq + 1 if checker is not None else name_seq
            raise AuditTampered(f"{path.name}: seq {seq}: bad segment header ({exc})",
                                seq=seq, segment=path.name) from None
        header = parsed.header
        if checker is None:
            checker = ChainChecker(None, verify_key, name_seq - 1, header.prev_hash)
            first_seq, first_prev = name_seq, header.prev_hash
        expected = checker.seq + 1
        if header.first_seq != name_seq or header.first_seq < expected:
            _fail(path, expected, f"segment header says it starts at seq {header.first_seq}")
        if header.first_seq > expected:
            _fail(path, expected, f"gap: records {expected}..{header.first_seq - 1} are missing "
                                  "(a segment was deleted)")
        if header.prev_hash != checker.hash:
            _fail(path, expected, "segment header's previous hash does not match the chain")
        later = _seqs(parsed.frames)
        for _, body, stored in parsed.frames:
            try:
                record = checker.feed(body, stored, later.__contains__)
            except Broken as exc:
                _fail(path, exc.seq, exc.reason)
            if record.kind == "checkpoint":
                unsigned_since = 0
            elif not unsigned_since:
                unsigned_since = record.time_ns
            if record.op == RESUMED_OP:
                resumed.append((record.seq, record.key))
        if parsed.problem is not None:
            rest = data[parsed.good_end:]
            # The writer appends with write(): a reader of a live node may see the last
            # frame half-written, and a crash may leave it so (or zero-filled). Only there.
            torn_write = "cut short" in parsed.problem or not rest.strip(b"\0")
            if not (newest and torn_write):
                _fail(path, checker.seq + 1, parsed.problem)
            if _whole_frame_inside(checker.hash, rest):
                _fail(path, checker.seq + 1, "record length altered: a complete record follows "
                                             "a length that runs past the end")
            torn = len(rest)
    assert checker is not None
    unsigned = checker.seq - checker.unsigned_from + 1 if checker.unsigned_from else 0
    return VerifyReport(node=checker.node or "?", first_seq=first_seq, last_seq=checker.seq,
                        records=checker.records, checkpoints=checker.checkpoints,
                        segments=len(segments), first_prev_hash=first_prev,
                        last_hash=checker.hash, last_time_ns=checker.last_time_ns,
                        signed_seq=checker.last_checkpoint_seq, unsigned_records=unsigned,
                        unsigned_since_ns=unsigned_since if unsigned else 0, torn_bytes=torn,
                        resumed=tuple(resumed))


def _whole_frame_inside(prev_hash: bytes, rest: bytes) -> bool:
    """Whether *rest* (bytes after the last complete frame, whose stated length runs past the
    end) holds a complete record chaining from *prev_hash* anyway: then the length was edited,
    not cut by a write in progress (that leaves only a prefix of one frame)."""
    data = rest[F.LENGTH.size:]
    unpacker = msgpack.Unpacker(max_buffer_size=len(data) + 1)
    try:
        unpacker.feed(data)
        unpacker.skip()
    except Exception:  # any malformed or incomplete msgpack: not a whole record
        return False
    n = unpacker.tell()
    return (len(data) >= n + F.HASH_SIZE
            and F.chain_hash(prev_hash, data[:n]) == data[n:n + F.HASH_SIZE])


def _seqs(frames: list[tuple[int, bytes, bytes]]) -> set[int]:
    seqs: set[int] = set()
    for _, body, _ in frames:
        try:
            seqs.add(F.decode_body(body).seq)
        except ValueError:
            pass
    return seqs


def _fail(path: Path, seq: int, reason: str) -> None:
    raise AuditTampered(f"{path.name}: seq {seq}: {reason}", seq=seq, segment=path.name)


def read_records(directory: Path) -> Iterator[AuditRecord]:
    """Every decodable record of *directory* in order, without checking the chain (run
    :func:`verify_log` first when the records must be trusted)."""
    for _, path in list_segments(directory):
        try:
            parsed = parse_segment(path.read_bytes())
        except ValueError:
            continue
        for _, body, _ in parsed.frames:
            try:
                yield F.decode_body(body)
            except ValueError:
                continue
