"""Reading segments and checking a chain: shared by the writer's recovery, the receiver of
shipped batches and the offline verifier, so all three apply exactly the same rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from . import _format as F
from ._format import AuditRecord, SegmentHeader

__all__ = ["Broken", "ChainChecker", "ParsedSegment", "parse_segment"]


class Broken(Exception):
    """The chain breaks at record *seq* for *reason* (internal; callers map it to their error)."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"seq {seq}: {reason}")
        self.seq = seq
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedSegment:
    """A segment's header and its complete frames ``(offset, body, stored hash)``.

    ``problem`` says why parsing stopped before the end of the data (a frame cut short or with
    an impossible length), with ``good_end`` the offset where the last complete frame ends.
    """

    header: SegmentHeader
    frames: list[tuple[int, bytes, bytes]]
    problem: str | None
    good_end: int


def parse_segment(data: bytes) -> ParsedSegment:
    """Split a segment file's bytes; :class:`ValueError` if its header is invalid."""
    header = SegmentHeader.decode(data)
    pos = F.HEADER.size
    frames: list[tuple[int, bytes, bytes]] = []
    problem: str | None = None
    end = len(data)
    while pos < end:
        if end - pos < F.LENGTH.size:
            problem = "record cut short (truncated length)"
            break
        (n,) = F.LENGTH.unpack_from(data, pos)
        if n == 0 or n > F.MAX_BODY:
            problem = f"impossible record length {n}"
            break
        stop = pos + F.LENGTH.size + n + F.HASH_SIZE
        if stop > end:
            problem = "record cut short (truncated)"
            break
        body = data[pos + F.LENGTH.size:pos + F.LENGTH.size + n]
        frames.append((pos, body, data[stop - F.HASH_SIZE:stop]))
        pos = stop
    return ParsedSegment(header, frames, problem, pos)


class ChainChecker:
    """Feeds records in order and checks seq continuity, chain hashes and checkpoint signatures.

    Start it at ``(seq, hash)`` of the record just before the first one fed (``(0, GENESIS)`` for
    a whole log). Every failure raises :class:`Broken` naming the first broken record.
    """

    def __init__(self, node: str | None, verify_key: bytes | None, seq: int, prev_hash: bytes
                 ) -> None:
        self.node = node
        self._key = nacl.signing.VerifyKey(verify_key) if verify_key is not None else None
        self.seq = seq
        self.hash = prev_hash
        self.last_kind = "checkpoint"  # nothing fed yet: nothing unsigned
        self.last_checkpoint_seq = 0
        self.unsigned_from = 0  # first seq not covered by a checkpoint (0 when all are)
        self.records = 0
        self.checkpoints = 0
        self.last_time_ns = 0

    def feed(self, body: bytes, stored: bytes | None,
             appears_later: Callable[[int], bool] | None = None) -> AuditRecord:
        """Check the next record; return it decoded. *stored* is its stored chain hash (None
        when it is recomputed, as for shipped records). *appears_later(seq)* lets the caller say
        whether a seq shows up further on, to tell a reordering from a gap."""
        expected = self.seq + 1
        digest = F.chain_hash(self.hash, body)
        try:
            record = F.decode_body(body)
        except ValueError as exc:
            raise Broken(expected, f"unreadable record ({exc})") from None
        if record.seq != expected:
            if appears_later is not None and appears_later(expected):
                raise Broken(expected, f"reordered: found seq {record.seq} where {expected} "
                                       "belongs")
            if record.seq > expected:
                raise Broken(expected, f"gap: records {expected}..{record.seq - 1} are missing")
            raise Broken(expected, f"reordered or duplicated: found seq {record.seq} after "
                                   f"{self.seq}")
        if stored is not None and stored != digest:
            raise Broken(expected, "hash mismatch: this record (or, for the first record "
                                   "of a segment, the segment header) was altered")
        if self.node is None:
            self.node = record.node
        elif record.node != self.node:
            raise Broken(expected, f"record of node {record.node!r} in the log of {self.node!r}")
        if record.kind == "checkpoint":
            self._check_checkpoint(record)
            self.checkpoints += 1
            self.last_checkpoint_seq = record.seq
            self.unsigned_from = 0
        else:
            self.records += 1
            if not self.unsigned_from:
                self.unsigned_from = record.seq
        self.seq, self.hash = record.seq, digest
        self.last_kind = record.kind
        self.last_time_ns = max(self.last_time_ns, record.time_ns)
        return record

    def _check_checkpoint(self, record: AuditRecord) -> None:
        if record.covers_seq != record.seq - 1 or record.covers_hash != self.hash:
            raise Broken(record.seq, "checkpoint does not cover the chain before it")
        if self._key is None:
            return
        message = F.checkpoint_message(record.node, record.covers_seq, record.covers_hash,
                                       record.time_ns)
        try:
            self._key.verify(message, record.signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise Broken(record.seq, "bad checkpoint signature (not signed by the pinned key)"
                         ) from None
