"""Offline verification of one node's audit log (its own directory or a shipped copy)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._errors import AuditTampered, ConfigError
from . import _format as F
from ._chain import Broken, ChainChecker, parse_segment
from ._format import AuditRecord

__all__ = ["VerifyReport", "list_segments", "read_records", "verify_log"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a successful verification covered."""

    node: str
    first_seq: int  # > 1 when older segments were removed by retention
    last_seq: int
    records: int
    checkpoints: int
    segments: int
    first_prev_hash: bytes
    last_hash: bytes
    last_time_ns: int


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """``(first seq from the name, path)`` of every segment in *directory*, in seq order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(seq, directory / n) for n in names if (seq := F.segment_seq(n)) is not None]
    return sorted(found)


def verify_log(directory: Path, verify_key: bytes | None) -> VerifyReport:
    """Check every segment in *directory*: seq continuity across segments, chain hashes,
    checkpoint signatures against *verify_key* (None: signatures unchecked — callers say so),
    and a checkpoint at the end. Raise :class:`AuditTampered` naming the first broken record."""
    segments = list_segments(directory)
    if not segments:
        raise ConfigError(f"{directory}: no audit segments here")
    checker: ChainChecker | None = None
    first_seq = 0
    first_prev = F.GENESIS
    for name_seq, path in segments:
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
                checker.feed(body, stored, later.__contains__)
            except Broken as exc:
                _fail(path, exc.seq, exc.reason)
        if parsed.problem is not None:
            _fail(path, checker.seq + 1, parsed.problem)
    assert checker is not None
    try:
        checker.finish()
    except Broken as exc:
        _fail(segments[-1][1], exc.seq, exc.reason)
    return VerifyReport(node=checker.node or "?", first_seq=first_seq, last_seq=checker.seq,
                        records=checker.records, checkpoints=checker.checkpoints,
                        segments=len(segments), first_prev_hash=first_prev,
                        last_hash=checker.hash, last_time_ns=checker.last_time_ns)


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
