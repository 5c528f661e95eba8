"""The node's own audit log: records appended from the event loop without blocking, chained,
checkpointed, written and fsynced by one writer thread (group commit).

Durability (the crash window, stated plainly): :meth:`AuditLog.record` only queues; the reply
to the client does not wait for the record's fdatasync. The writer thread commits everything
queued in one write + one fdatasync, at most once per ``commit_interval_s`` (10 ms by default:
one fdatasync per interval rather than one per request), so a kill -9 or a power loss loses the
records of the requests answered during the last interval and the commit in progress. A clean
shutdown loses nothing: it flushes and writes a final checkpoint. After a crash the torn last
frame is cut and the next start signs the recovered tail with a checkpoint at once.

If writing the log fails (disk full, I/O error) the log stops for good and :attr:`failed` says
why; the node then refuses client requests rather than serve them untraced.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import _format as F
from ._files import fingerprint, load_cursors, load_or_create_signing_key
from ._format import AuditRecord
from ._names import AuditNames
from ._segments import SegmentWriter, prune_segments, recover_tail

__all__ = ["AuditLog", "AuditSettings"]

log = logging.getLogger("hdsd.audit")

_DAY_NS = 86_400 * 10**9
_Item = tuple[int, str, str, str, str, str, str, str, int, int, str, str]


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The ``[audit]`` configuration section."""

    checkpoint_records: int = 1000
    checkpoint_s: float = 10.0
    retention_days: int = 365
    segment_bytes: int = 64 << 20
    # Gather records this long after a sync before the next one: one fdatasync per interval
    # instead of one per request at light load (the reply never waits for it anyway).
    commit_interval_s: float = 0.01


class AuditLog:
    """One node's audit log in *directory* (``<data_dir>/audit``). Call :meth:`close` once."""

    def __init__(self, directory: Path, node: str, settings: AuditSettings = AuditSettings(),
                 *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.node = node
        self.settings = settings
        # Set by the node: seals the bucket and key of client requests (see ._names).
        self.seal_names: AuditNames | None = None
        self._clock_ns = clock_ns
        self._signing = load_or_create_signing_key(directory)
        self.verify_key = bytes(self._signing.verify_key)
        tail = recover_tail(directory, node, self.verify_key)
        self._writer = SegmentWriter(directory, tail)
        # No segment at all: a new node, or one whose disk was replaced. Until the first
        # commit, the chain may still start after the tail of this node's log as the other
        # site holds it (resume_after), instead of at seq 1 with a new genesis.
        self.fresh = not self._writer.is_open
        self._commit_lock = threading.Lock()
        if not self._writer.is_open:
            self._writer.start_segment(1, F.GENESIS)
        self._seq, self._hash = tail.seq, tail.hash
        self._unsigned = 0 if not tail.unsigned_from else tail.seq - tail.unsigned_from + 1
        self._unsigned_since = time.monotonic()
        self.durable: tuple[int, bytes] = (tail.seq, tail.hash)  # replaced whole: atomic read
        cursors = load_cursors(directory)
        self.shipped_seq = max((s for s, _ in cursors.values()), default=0)
        self.failed: str | None = None
        self.records_written = 0
        self._queue: collections.deque[_Item | None] = collections.deque()  # None: checkpoint
        self._cond = threading.Condition()
        self._sleeping = False
        self._closing = False
        self._synced = threading.Condition()
        self._queued = 0  # records queued, ever (event-loop side)
        self._committed = 0  # ... and durable (writer thread)
        # Called by the writer thread after records became durable (the shipper's bell): it
        # must not block, and must be safe from another thread.
        self.on_durable: Callable[[], None] | None = None
        log.info("event=audit_open node=%s dir=%s seq=%d verify_key=%s fingerprint=%s", node,
                 directory, tail.seq, self.verify_key.hex(), fingerprint(self.verify_key))
        if self._unsigned:
            self._queue.append(None)  # sign what a crash left unsigned, first thing
        self._prune()
        self._last_sync = 0.0
        self._thread = threading.Thread(target=self._run, name="hdsd-audit-writer", daemon=True)
        self._thread.start()

    # -- event-loop side (cheap: no system call while the writer is busy) --------------------
    def record(self, identity: str, role: str, tenant: str, op: str, bucket: str, key: str,
               version: str, bytes_in: int, bytes_out: int, outcome: str, peer: str) -> None:
        """Queue one request record; never blocks. Durable within one batch commit."""
        if self.failed is not None:
            return  # the node refuses requests now (see Node); nothing more can be written
        self._queued += 1
        self._queue.append((time.time_ns(), identity, role, tenant, op, bucket, key, version,
                            bytes_in, bytes_out, outcome, peer))
        if self._sleeping:
            with self._cond:
                self._cond.notify()

    def resume_after(self, seq: int, prev_hash: bytes) -> bool:
        """Blocking (call from a worker thread). Make this fresh log continue the chain after
        record *seq* whose chain hash is *prev_hash* (the tail of this node's log as the other
        site's copy holds it: the node lost its disk but kept its signing key). False if the
        log is not fresh or already committed records (the chain has begun: too late)."""
        with self._commit_lock:
            if not self.fresh or self._seq != 0 or self._writer.size != F.HEADER.size:
                return False
            old = self.directory / F.segment_name(1)
            self._writer.start_segment(seq + 1, prev_hash)
            old.unlink(missing_ok=True)
            self._seq, self._hash = seq, prev_hash
            with self._synced:
                self.durable = (seq, prev_hash)
            self.fresh = False
            log.warning("event=audit_resumed node=%s after_seq=%d prev_hash=%s", self.node, seq,
                        prev_hash.hex()[:16])
            return True

    def request_checkpoint(self) -> None:
        self._queue.append(None)
        with self._cond:
            self._cond.notify()

    def checkpoint_and_wait(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """Blocking (call from a worker thread): write a checkpoint now and wait until it is
        durable; return the durable ``(seq, hash)``."""
        target = self._seq + 1  # at least one record (the checkpoint) past the current end
        self.request_checkpoint()
        with self._synced:
            self._synced.wait_for(lambda: self.durable[0] >= target or self.failed is not None
                                  or not self._thread.is_alive(), timeout)
        return self.durable

    def wait_durable(self, timeout: float = 10.0) -> bool:
        """Blocking: wait until every record queued so far is durable; False on timeout."""
        target = self._queued
        with self._synced:
            return self._synced.wait_for(
                lambda: self._committed >= target or self.failed is not None
                or not self._thread.is_alive(), timeout) and self._committed >= target

    def close(self) -> None:
        """Flush everything queued, write a final checkpoint, fsync, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self._writer.close()

    # -- writer thread -----------------------------------------------------------------------
    def _due(self) -> bool:
        return self._unsigned > 0 and (
            time.monotonic() - self._unsigned_since >= self.settings.checkpoint_s)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._sleeping = True
                    try:
                        while not (self._queue or self._closing or self._due()):
                            wait = (self.settings.checkpoint_s
                                    - (time.monotonic() - self._unsigned_since)
                                    if self._unsigned else None)
                            self._cond.wait(wait)
                    finally:
                        self._sleeping = False
                closing = self._closing
                rest = self._last_sync + self.settings.commit_interval_s - time.monotonic()
                if rest > 0 and not closing:
                    with self._cond:
                        self._cond.wait_for(lambda: self._closing, rest)
                    closing = self._closing
                with self._commit_lock:
                    self._commit(final=closing and not self._queue)
                self._last_sync = time.monotonic()
                if closing and not self._queue:
                    return
        except OSError as exc:
            self.failed = f"audit log write failed: {exc}"
            log.error("event=audit_failed node=%s reason=%s", self.node, exc)
        finally:
            with self._synced:
                self._synced.notify_all()

    def _commit(self, *, final: bool) -> None:
        buf = bytearray()
        taken = 0
        while self._queue:
            item = self._queue.popleft()
            if item is None:
                buf += self._checkpoint()  # asked for explicitly: even with nothing new
                continue
            taken += 1
            t, identity, role, tenant, op, bucket, key, version, b_in, b_out, outcome, peer = item
            buf += self._append(AuditRecord(
                seq=self._seq + 1, time_ns=t, kind="request", node=self.node, identity=identity,
                role=role, tenant=tenant, op=op, bucket=bucket, key=key, version=version,
                bytes_in=b_in, bytes_out=b_out, outcome=outcome, peer=peer))
            if self._unsigned >= self.settings.checkpoint_records:
                buf += self._checkpoint()
        rotate = self._writer.size + len(buf) >= self.settings.segment_bytes
        if final or (self._unsigned and (rotate or self._due())):
            buf += self._checkpoint()  # a segment always ends signed; a clean stop is signed
        if buf:
            self._writer.append(buf)
            self._writer.sync()
            self.fresh = False
        self._publish(taken)
        if rotate and not final:
            self._writer.start_segment(self._seq + 1, self._hash)
            self._prune()

    def _append(self, record: AuditRecord) -> bytes:
        body = record.body()
        self._hash = F.chain_hash(self._hash, body)
        self._seq = record.seq
        if record.kind == "checkpoint":
            self._unsigned = 0
        else:
            if not self._unsigned:
                self._unsigned_since = time.monotonic()
            self._unsigned += 1
            self.records_written += 1
        return F.frame(body, self._hash)

    def _checkpoint(self) -> bytes:
        now = self._clock_ns()
        message = F.checkpoint_message(self.node, self._seq, self._hash, now)
        signature = self._signing.sign(message).signature
        return self._append(AuditRecord(
            seq=self._seq + 1, time_ns=now, kind="checkpoint", node=self.node,
            covers_seq=self._seq, covers_hash=self._hash, signature=signature))

    def _publish(self, taken: int) -> None:
        moved = self.durable[0] != self._seq
        with self._synced:
            self.durable = (self._seq, self._hash)
            self._committed += taken
            self._synced.notify_all()
        bell = self.on_durable
        if moved and bell is not None:
            bell()

    def _prune(self) -> None:
        cutoff = self._clock_ns() - self.settings.retention_days * _DAY_NS
        try:
            prune_segments(self.directory, cutoff, self.shipped_seq)
        except OSError as exc:
            log.warning("event=audit_prune_failed node=%s reason=%s", self.node, exc)
