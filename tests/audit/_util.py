"""Building real audit logs for tests, and rewriting them as a forger would."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nacl.signing

from hdsd.audit import AuditLog, AuditRecord, AuditSettings
from hdsd.audit import _format as F
from hdsd.audit._chain import parse_segment
from hdsd.audit._verify import list_segments


def make_log(directory: Path, n: int, *, segment_bytes: int = 64 << 20,
             checkpoint_records: int = 1_000_000, node: str = "n1") -> AuditLog:
    """A closed log of *n* request records (tenant ``t{i % 3}``), ending with a checkpoint."""
    audit = AuditLog(directory, node, AuditSettings(checkpoint_records=checkpoint_records,
                                                    checkpoint_s=3600,
                                                    segment_bytes=segment_bytes))
    try:
        for i in range(n):
            audit.record(f"client-{i}", "writer", f"t{i % 3}", "PutStart", "b", f"k{i}",
                         f"v{i}", i, 0, "ok", "127.0.0.1:1")
            audit.wait_durable()  # one batch each, so segments rotate between records
    finally:
        audit.close()
    return audit


def frame_map(directory: Path) -> list[tuple[Path, int, int, int]]:
    """``(segment, start, end, seq)`` of every byte range: headers map to their first record."""
    out = []
    for first, path in list_segments(directory):
        parsed = parse_segment(path.read_bytes())
        out.append((path, 0, F.HEADER.size, first))
        for i, (offset, body, _) in enumerate(parsed.frames):
            out.append((path, offset, offset + F.LENGTH.size + len(body) + F.HASH_SIZE,
                        first + i))
    return out


def copy_log(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite(directory: Path, change: Callable[[AuditRecord], AuditRecord],
            signer: nacl.signing.SigningKey | None = None) -> None:
    """Rewrite every segment with *change* applied to each record and the chain recomputed, as a
    forger would; with *signer*, checkpoints are re-signed with that (wrong) key."""
    prev = None
    for _, path in list_segments(directory):
        parsed = parse_segment(path.read_bytes())
        h = parsed.header.prev_hash if prev is None else prev
        out = bytearray(F.SegmentHeader(parsed.header.first_seq, h).encode())
        for _, body, _ in parsed.frames:
            record = change(F.decode_body(body))
            if record.kind == "checkpoint" and signer is not None:
                msg = F.checkpoint_message(record.node, record.seq - 1, h, record.time_ns)
                record = AuditRecord(seq=record.seq, time_ns=record.time_ns, kind=record.kind,
                                     node=record.node, covers_seq=record.seq - 1, covers_hash=h,
                                     signature=signer.sign(msg).signature)
            body = record.body()
            h = F.chain_hash(h, body)
            out += F.frame(body, h)
        prev = h
        path.write_bytes(bytes(out))
