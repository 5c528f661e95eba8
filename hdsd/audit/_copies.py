"""The receiving side of audit shipping: copies of other nodes' logs, kept under
``<data_dir>/audit/from-<origin>/`` in the same segment format, so ``hdsd audit verify --origin``
checks them exactly like the original.

A batch is accepted only if it continues the copy's chain: its ``(prev_seq, prev_hash)`` is the
copy's tail (or, for a resend, the records already held hash to the same tail), every record
chains, and every checkpoint is signed by the origin's key pinned at the first batch (trust on
first use: an attacker who later takes over the origin cannot swap the key of the copy).
Otherwise :class:`AuditChainBroken` and nothing is written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from .._errors import AuditChainBroken
from . import _format as F
from ._chain import Broken, ChainChecker
from ._files import VERIFY_KEY_FILE, atomic_write, fingerprint, read_verify_key
from ._segments import SegmentWriter, Tail, prune_segments, recover_tail

__all__ = ["AuditCopies", "copy_dir"]

log = logging.getLogger("hdsd.audit")

_DAY_NS = 86_400 * 10**9


def copy_dir(audit_dir: Path, origin: str) -> Path:
    return audit_dir / f"from-{origin}"


@dataclass(slots=True)
class _Copy:
    directory: Path
    key: bytes
    writer: SegmentWriter
    tail: Tail
    segment_bytes: int


class AuditCopies:
    """Every copy this node keeps; :meth:`receive` is called by the peer handler."""

    def __init__(self, audit_dir: Path, *, segment_bytes: int, retention_days: int) -> None:
        self.audit_dir = audit_dir
        self._segment_bytes = segment_bytes
        self._retention_days = retention_days
        self._copies: dict[str, _Copy] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def receive(self, origin: str, verify_key: bytes, prev_seq: int, prev_hash: bytes,
                      bodies: list[bytes]) -> tuple[int, bytes]:
        """Append a shipped batch; return the copy's new tail ``(seq, hash)``."""
        lock = self._locks.setdefault(origin, trio.Lock())
        async with lock:  # one batch of an origin at a time; the file work in a thread
            return await trio.to_thread.run_sync(self._receive, origin, verify_key, prev_seq,
                                                 prev_hash, bodies)

    def close(self) -> None:
        for copy in self._copies.values():
            copy.writer.close()
        self._copies.clear()

    def _open(self, origin: str, verify_key: bytes) -> _Copy:
        copy = self._copies.get(origin)
        if copy is not None:
            return copy
        directory = copy_dir(self.audit_dir, origin)
        directory.mkdir(parents=True, exist_ok=True)
        pinned = directory / VERIFY_KEY_FILE
        if pinned.exists():
            key = read_verify_key(pinned)
        else:
            key = verify_key
            atomic_write(pinned, (key.hex() + "\n").encode())
            log.info("event=audit_key_pinned origin=%s fingerprint=%s", origin, fingerprint(key))
        try:
            tail = recover_tail(directory, origin, key)
        except Exception as exc:
            raise AuditChainBroken(f"copy of {origin}'s audit log is damaged: {exc}") from None
        copy = _Copy(directory, key, SegmentWriter(directory, tail), tail, self._segment_bytes)
        self._copies[origin] = copy
        return copy

    def _receive(self, origin: str, verify_key: bytes, prev_seq: int, prev_hash: bytes,
                 bodies: list[bytes]) -> tuple[int, bytes]:
        copy = self._open(origin, verify_key)
        if verify_key != copy.key:
            raise self._refuse(origin, f"signing key {fingerprint(verify_key)} differs from the "
                                       f"pinned {fingerprint(copy.key)}")
        tail = copy.tail
        empty = not copy.writer.is_open
        if not empty:
            if prev_seq > tail.seq:
                raise self._refuse(origin, f"gap: the copy ends at seq {tail.seq}, the batch "
                                           f"starts after {prev_seq}")
            # A resend (the reply to an earlier batch was lost): skip what is held, but only if
            # it hashes to the same tail — otherwise the origin's chain forked.
            h, seq = prev_hash, prev_seq
            while seq < tail.seq and bodies:
                h = F.chain_hash(h, bodies[0])
                bodies = bodies[1:]
                seq += 1
            if seq < tail.seq:
                return tail.seq, tail.hash
            if h != tail.hash:
                raise self._refuse(origin, f"the batch's chain differs from the copy's at seq "
                                           f"{tail.seq}")
            prev_seq, prev_hash = seq, h
        checker = ChainChecker(origin, copy.key, prev_seq, prev_hash)
        buf = bytearray()
        try:
            for body in bodies:
                checker.feed(body, None)
                buf += F.frame(body, checker.hash)
        except Broken as exc:
            raise self._refuse(origin, f"seq {exc.seq}: {exc.reason}") from None
        if not buf:
            return tail.seq, tail.hash
        if empty:
            copy.writer.start_segment(prev_seq + 1, prev_hash)
        copy.writer.append(buf)
        copy.writer.sync()
        unsigned = checker.unsigned_from or (tail.unsigned_from if checker.checkpoints == 0
                                             else 0)
        copy.tail = Tail(checker.seq, checker.hash, unsigned, None, copy.writer.size)
        # Rotate only after a checkpoint, so every segment of the copy ends signed.
        if copy.writer.size >= copy.segment_bytes and checker.last_kind == "checkpoint":
            copy.writer.start_segment(checker.seq + 1, checker.hash)
            cutoff = time.time_ns() - self._retention_days * _DAY_NS
            prune_segments(copy.directory, cutoff, checker.seq)
        return checker.seq, checker.hash

    def _refuse(self, origin: str, why: str) -> AuditChainBroken:
        log.warning("event=audit_batch_refused origin=%s reason=%s", origin, why)
        return AuditChainBroken(f"audit batch from {origin} refused: {why}")
