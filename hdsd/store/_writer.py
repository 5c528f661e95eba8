"""The log-writer thread: group commit (one write + one fdatasync per batch), rotation, and
the fail-stop rule. The format and the commit rule are specified in ``_log``."""

from __future__ import annotations

import collections
import errno
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from .._errors import DiskFullError, StoreClosedError, StoreError, StoreFailedError
from . import _format as F
from ._fs import FileSystem
from ._index import AppliedPosition, Index, Location
from ._log import frame_batch_parts
from ._records import EncodedRecord, StoredRecord
from ._sealed import SealedVersion
from ._seen import SeenRequests
from ._version import Version
from ._wake import Doorbell, Waker, WakerPool

# Free space a batch must leave for the index. Log segments are preallocated, so appends do
# not grow the disk usage; the SQLite index and its WAL on the same disk do. Without a reserve
# the index hits ENOSPC first — after the batch was acknowledged — and that stops the store
# (fail-stop) instead of refusing one write with DiskFullError.
INDEX_RESERVE_BYTES = 8 << 20

__all__ = ["LogWriter", "PendingCommit"]

# Bound one batch so a burst of large chunks cannot build a gigantic write; a single commit
# larger than this still goes out whole (commits are atomic).
MAX_BATCH_BYTES = 16 << 20

# The log's page cache kept behind the head (recent writes are read soon: a get after its put,
# a replica catching up); older pages are dropped in steps (see LogWriter._drop_behind).
CACHE_BEHIND = 2 << 30
DROP_STEP = 8 << 20
# A batch whose committers were parked on it (they run the moment they are woken: a
# replica's reply) is indexed this long after its acknowledgement, unless a read
# (wait_indexed), the close or INDEX_BATCHES_MAX batches waiting ask sooner: meanwhile they run
# without this thread taking the GIL from them, and batches of steady traffic share one index
# transaction. Long enough for a reply to go out, short enough to be done before the next
# request of a lone client comes (measured: 2 ms put the index update of one put on the path
# of the next). A batch nobody was parked on (a coordinator still waiting for its peer) is
# indexed at once, while the event loop has nothing to do. While a node serves one request
# alone, both wait for its end instead (INDEX_HOLD_MAX_S below).
INDEX_DELAY_S = 0.0005
INDEX_BATCHES_MAX = 16
# While a node serves one request alone (LogWriter.node_busy), a batch is indexed once that
# request has ended — its reply is out, the event loop has nothing to do — instead of at a
# moment that can land on the reply's path (measured, bench/put_timeline.py: a lone put's
# Reply or ack that overlapped the index update took 1.2-2.7 ms to go out instead of
# 0.4-0.6), and at the latest this long after its acknowledgement. With more requests in
# flight the rules above stay: a read of a busy node would otherwise find more batches to
# wait for.
INDEX_HOLD_MAX_S = 0.005


@dataclass(eq=False, slots=True)
class PendingCommit:
    """One caller's records, waiting for their batch. Woken exactly once, with *error* or not."""

    records: list[EncodedRecord]
    nbytes: int
    waker: Waker
    error: StoreError | None = None
    completed: bool = False  # writer thread only: guards against a second wake-up
    # Compaction: these records are already indexed elsewhere; the index moves them here.
    relocate: bool = False
    # Compaction after a shred: start a new segment first, so the current one becomes sealed
    # (compactable) even if it holds the shredded tenant's records. May carry no records.
    rotate: bool = False


@dataclass(slots=True)
class _Unindexed:
    """An acknowledged batch waiting for its index update (writer thread only). Kept as the
    log writer had it: its index rows are built when it is applied (:meth:`rows`), not
    between the acknowledgement and the writer's next sleep, while the woken committers
    (a replica's reply) wait for the GIL."""

    records: list[EncodedRecord]
    offsets: list[int]  # each record's frame offset in *segment*
    segment: int
    position: AppliedPosition
    moved: frozenset[int]  # id() of compaction's copies among *records* (usually empty)
    requests: list[Version]  # request ids to drop from the side table once indexed
    acked: int  # the writer's _acked count once this batch was acknowledged
    at: float  # when it is due under INDEX_DELAY_S's rule (earlier when nobody was parked)
    acked_at: float  # time.monotonic() of the acknowledgement

    def rows(self, items: list[tuple[StoredRecord, Location]],
             names: list[tuple[SealedVersion, Version]], moved: set[int],
             relocated: list[tuple[StoredRecord, Location]]) -> None:
        """Append this batch's index entries: *items* (record, location), *names* (the clear
        versions of sealed ones, for the listing caches), *moved* (positions in *items* of
        compaction's copies) and *relocated* (those copies' entries)."""
        segment, base = self.segment, len(items)
        items.extend((e.record, Location(segment, off, F.FRAME_HEADER_SIZE + e.size))
                     for e, off in zip(self.records, self.offsets, strict=True))
        names.extend((e.record, e.clear) for e in self.records
                     if e.clear is not None and isinstance(e.record, SealedVersion))
        if self.moved:
            for i, e in enumerate(self.records):
                if id(e) in self.moved:
                    moved.add(base + i)
                    relocated.append(items[base + i])


def spare_path(final: str) -> str:
    return final[: -len(F.SEGMENT_SUFFIX)] + F.SEGMENT_TMP_SUFFIX


def prepare_segment(fs: FileSystem, final: str, number: int, segment_bytes: int, *,
                    stop: threading.Event | None = None) -> bool:
    """Create ``<final>.tmp`` (not yet renamed): preallocated, with its header, fsynced.

    With *stop* (the background path) the space is also zero-filled, step by step, and the
    work abandoned (file removed, False returned) as soon as *stop* is set.
    """
    tmp = spare_path(final)
    try:
        fs.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = fs.open_write(tmp, create=True)
    try:
        fs.preallocate(fd, 0, segment_bytes)
        if stop is not None:
            for pos in range(0, segment_bytes, _ZERO_STEP):
                if stop.is_set():
                    raise _Stopped
                fs.write_zeros(fd, pos, min(_ZERO_STEP, segment_bytes - pos))
        fs.pwrite(fd, F.segment_header(number), 0)
        fs.fsync(fd)
    except BaseException as exc:
        fs.close(fd)
        try:
            fs.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, _Stopped):
            return False
        raise
    fs.close(fd)
    return True


class _Stopped(Exception):
    pass


_ZERO_STEP = 4 << 20


class _SparePreparer:
    """Prepares the next segment, zero-filled, in a background thread so rotation is a rename;
    a failure surfaces at rotation (which then prepares synchronously and reports it)."""

    def __init__(self, fs: FileSystem, final: str, number: int, segment_bytes: int) -> None:
        self.number = number
        self.ok = False
        self._stop = threading.Event()
        self._args = (fs, final, number, segment_bytes)
        self._thread = threading.Thread(target=self._run, name="hdsd-segment-preparer",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.ok = prepare_segment(*self._args, stop=self._stop)
        except Exception:
            self.ok = False

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


class LogWriter:
    """Owns the head segment and the writing index connection; runs one thread."""

    def __init__(self, *, directory: str, fs: FileSystem, index: Index, segment_bytes: int,
                 head_segment: int, head_offset: int) -> None:
        self._dir = directory
        self._fs = fs
        self._index = index
        self._segment_bytes = segment_bytes
        self._segment = head_segment
        self._head = head_offset
        # The log's ranges still in the page cache, oldest first, as [path, start, stop]; the
        # last one is the head segment's (see _drop_behind).
        self._cached: collections.deque[list[Any]] = collections.deque(
            [[self._path(head_segment), head_offset, head_offset]])
        self._cached_bytes = 0
        self._position = (head_segment, head_offset)  # one attribute: read atomically
        self._fd: int | None = None
        self._spare: _SparePreparer | None = None
        self._queue: collections.deque[PendingCommit] = collections.deque()
        self._submit_lock = threading.Lock()  # orders submissions against close()
        self._doorbell = Doorbell()
        self.wakers = WakerPool()
        self._closing = False
        self.failed: str | None = None  # why the store stopped (fail-stop), if it did
        # Batches acknowledged / applied to the index: reads wait while they differ (see
        # wait_indexed). Only the writer thread writes them.
        self._acked = 0
        self._indexed = 0
        self._indexed_cond = threading.Condition()
        self._unindexed: list[_Unindexed] = []  # acknowledged, index update deferred
        self._index_wanted = False  # a reader waits for the index: apply it now
        # Set by node_busy: a node's lone request is in flight (its batches are held), and
        # that request just ended (index now).
        self._node_busy = False
        self._kicked = False
        self._index_lost: str | None = None  # acknowledged batches this index will never hold
        # Request ids of versions acknowledged but maybe not indexed yet, so an idempotency
        # lookup need not wait for the index (see find_unindexed_request). Writer thread
        # adds before the ack and removes only after the index holds them.
        self._unindexed_requests: dict[tuple[str, bytes], Version] = {}
        # Every request id this store may hold (see ._seen): made before the first commit,
        # each committed id added before its ack; the ids indexed before it, by a scan.
        self.seen_requests = SeenRequests(index.record_count())
        # Statistics; written by the writer thread only.
        self.commits = 0
        self.batches = 0
        self.fsyncs = 0
        self.bytes_written = 0
        self.last_fsync_seconds = 0.0
        # The last fsyncs (seconds, records in the batch), for recent latency percentiles in
        # `hdsd status` and the metrics; appended by the writer thread, copied whole by readers.
        self.recent_fsyncs: collections.deque[tuple[float, int]] = collections.deque(maxlen=512)
        if head_segment == 0:
            self._rotate()
        else:
            self._fd = fs.open_write(self._path(head_segment))
            self._spare = _SparePreparer(fs, self._path(head_segment + 1), head_segment + 1,
                                         segment_bytes)
        self._thread = threading.Thread(target=self._run, name="hdsd-log-writer", daemon=True)
        self._thread.start()

    @property
    def head(self) -> tuple[int, int]:
        """(segment number, offset) just after the last durable batch."""
        return self._position

    def _path(self, number: int) -> str:
        return os.path.join(self._dir, F.segment_name(number))

    # --- caller side ----------------------------------------------------------------------
    def submit(self, commit: PendingCommit) -> None:
        with self._submit_lock:
            if self._closing:
                raise StoreClosedError("the store is closed")
            if self.failed is not None:
                raise StoreFailedError(self.failed)
            self._queue.append(commit)
            self._doorbell.ring()

    def commit_blocking(self, encoded: list[EncodedRecord], nbytes: int, *,
                        relocate: bool = False, rotate: bool = False) -> None:
        """Queue *encoded* (*nbytes* of frames) and block this thread until it is durable (or
        raise the writer's error). With *relocate*, the index is moved to the new copies
        (compaction). With *rotate*, a new segment is started first (*encoded* may be empty:
        compaction after a shred seals the head segment so). The one blocking commit path:
        ``Store.commit_sync`` and compaction."""
        pending = PendingCommit(encoded, nbytes, self.wakers.for_thread(), relocate=relocate,
                                rotate=rotate)
        self.submit(pending)
        assert pending.waker.event is not None
        pending.waker.event.wait()
        if pending.error is not None:
            raise pending.error

    def node_busy(self, busy: bool) -> None:
        """Whether the node serves exactly one request (called from its event loop whenever
        its count of requests in flight changes). While it does, acknowledged batches wait
        for that request to end — the writer thread's index work then never takes the GIL
        from a reply on its way — or :data:`INDEX_HOLD_MAX_S`, or a read
        (:meth:`wait_indexed`); when it ends (or another request starts) they are indexed
        at once. Otherwise the usual rule (:data:`INDEX_DELAY_S`) applies."""
        held, self._node_busy = self._node_busy, busy
        if held and not busy and self._unindexed:  # the lone request ended, or company came
            self._kicked = True
            self._doorbell.ring()  # a system call only while the writer sleeps on a batch

    def all_indexed(self) -> bool:
        """Whether every batch acknowledged so far is in the index (never blocks)."""
        return self._indexed >= self._acked and self._index_lost is None

    def wait_indexed(self) -> None:
        """Block until every acknowledged batch is in the index (reads call this first).

        The writer wakes committers before it updates the index (that update is then off
        their latency path); this keeps every read made after an acknowledgement seeing it.
        Raises :class:`StoreFailedError` if the index failed to take an acknowledged batch:
        such records are durable and a restart replays them, but this instance cannot serve
        them, and answering without them would be a stale read.
        """
        target = self._acked  # not later ones: under steady writes they never stop coming
        if self._indexed >= target and self._index_lost is None:
            return  # the common case: no lock
        self._index_wanted = True  # the writer applies what it deferred at once
        self._doorbell.ring()
        with self._indexed_cond:
            while self._indexed < target and self._index_lost is None:
                self._indexed_cond.wait()
        if self._index_lost is not None:
            raise StoreFailedError(self._index_lost)

    def find_unindexed_request(self, tenant: str, request_id: bytes) -> Version | None:
        """A version with this request id acknowledged but perhaps not in the index yet.

        A lookup that checks here first and the index second misses nothing acknowledged
        before it, without waiting: an entry leaves this table only after its index commit.
        Raises :class:`StoreFailedError` if the index lost acknowledged batches.
        """
        found = self._unindexed_requests.get((tenant, request_id))
        if self._index_lost is not None:
            raise StoreFailedError(self._index_lost)
        return found

    def close(self) -> None:
        """Write everything already queued, then stop the thread and close the head segment."""
        with self._submit_lock:
            self._closing = True
            self._doorbell.ring()
        self._thread.join()
        self._doorbell.close()
        self.wakers.close()
        if self._spare is not None:
            self._spare.cancel()  # a finished spare stays; the next open removes it
        if self._fd is not None:
            self._fs.close(self._fd)
            self._fd = None

    # --- writer thread ----------------------------------------------------------------------
    def _ready(self) -> bool:
        return bool(self._queue) or self._closing or self._index_wanted or self._kicked

    def _run(self) -> None:
        queue = self._queue
        while True:
            if self._unindexed:
                first = self._unindexed[0]
                due = (first.acked_at + INDEX_HOLD_MAX_S if self._node_busy
                       else first.at + INDEX_DELAY_S)
                self._doorbell.sleep_until(self._ready, max(0.0, due - time.monotonic()))
                if self._node_busy:  # held (a lone request): its end kicks, or the bound
                    due = first.acked_at + INDEX_HOLD_MAX_S
                if (self._index_wanted or self._closing or self._kicked
                        or (not queue and not self._node_busy)
                        or len(self._unindexed) >= INDEX_BATCHES_MAX
                        or time.monotonic() >= due):
                    self._apply_unindexed()
            else:
                self._doorbell.sleep_until(self._ready)
                self._index_wanted = False  # nothing deferred: the reader's wait is over
                self._kicked = False  # nor for a kick (it raced with the last apply)
            if not queue:
                if self._closing:
                    return  # submit() refuses once _closing is set, so nothing follows
                continue
            # Only this thread pops; submitters only append (both atomic under the GIL).
            batch = [queue.popleft()]
            size = batch[0].nbytes
            while queue and size + queue[0].nbytes <= MAX_BATCH_BYTES:
                size += queue[0].nbytes
                batch.append(queue.popleft())
            try:
                self._process(batch, size)
            except BaseException as exc:  # never leave a waiter hanging, whatever happened
                self._fail(f"log writer crashed: {exc!r}")
                with self._submit_lock:  # nothing is queued after this (failed is set)
                    batch.extend(queue)
                    queue.clear()
                self._complete(batch, StoreFailedError, self.failed or "")
                if self._indexed != self._acked:
                    self._lose_index()
                raise

    def _process(self, batch: list[PendingCommit], size: int) -> None:
        if self.failed is not None:
            self._complete(batch, StoreFailedError, self.failed)
            return
        if self._free_bytes() < INDEX_RESERVE_BYTES + size:
            self._complete(batch, DiskFullError, "no space left on the data disk (the index "
                           "keeps a reserve); nothing of this write was acknowledged")
            return
        records = [r for c in batch for r in c.records]
        rotate = any(c.rotate for c in batch)
        try:
            if self._fd is None or ((rotate or self._head + size > self._segment_bytes)
                                    and self._head > F.SEGMENT_HEADER_SIZE):
                self._rotate()
        except OSError as exc:
            self._refuse(batch, exc, "creating a log segment failed")
            return
        if not records:  # a rotation alone: nothing to write or index
            self._complete(batch, None, "")
            return
        assert self._fd is not None
        parts, offsets = frame_batch_parts(records, self._head)
        written = sum(map(len, parts))
        try:
            self._fs.pwritev(self._fd, parts, self._head)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._undo_partial_write()
            self._refuse(batch, exc, "log write failed")
            return
        try:
            started = time.perf_counter()
            self._fs.fdatasync(self._fd)
            self.last_fsync_seconds = time.perf_counter() - started
        except OSError as exc:
            # Never retried: after a failed fsync the kernel may have dropped the dirty pages,
            # so a retry that succeeds proves nothing (PostgreSQL's "fsyncgate").
            self._fail(f"fdatasync of the log failed: {exc}")
            self._complete(batch, StoreFailedError, self.failed or "")
            return
        self.fsyncs += 1
        self.recent_fsyncs.append((self.last_fsync_seconds, len(batch)))
        segment, end = self._segment, self._head + written
        self._head = end
        self._position = (segment, end)
        self.batches += 1
        self.bytes_written += written
        self.commits += len(batch)
        # Durable: acknowledge now, index next. Readers wait for the index meanwhile
        # (wait_indexed), so the ack cannot be observed before the records are readable.
        requests = [r for e in records if (r := e.clear) is not None and r.request_id]
        for r in requests:
            self.seen_requests.add(r.tenant, r.request_id)
            self._unindexed_requests.setdefault((r.tenant, r.request_id), r)
        parked = any(c.waker.parked for c in batch)  # read before they are woken
        self._acked += 1
        self._complete(batch, None, "")
        # Indexed a moment later (see INDEX_DELAY_S); reads wait for it meanwhile.
        now = time.monotonic()
        self._unindexed.append(_Unindexed(
            records=records, offsets=offsets, segment=segment,
            position=AppliedPosition(segment, end, offsets[-1]),
            moved=frozenset(id(r) for c in batch if c.relocate for r in c.records),
            requests=requests, acked=self._acked,
            at=now - (0.0 if parked else INDEX_DELAY_S), acked_at=now))
        try:
            self._drop_behind(written)  # after the acknowledgement: a hint, off its path
        except Exception:  # a cache hint must never stop the store (a crash here would)
            pass

    def _apply_unindexed(self) -> None:
        """Index every acknowledged batch still waiting, in one transaction."""
        self._index_wanted = False
        self._kicked = False
        pending, self._unindexed = self._unindexed, []
        if not pending or self._index_lost is not None:
            return
        items: list[tuple[StoredRecord, Location]] = []
        names: list[tuple[SealedVersion, Version]] = []
        moved: set[int] = set()
        relocated: list[tuple[StoredRecord, Location]] = []
        for p in pending:
            p.rows(items, names, moved, relocated)
        try:
            # The last batch's position covers the others: batches are applied in log order.
            self._index.apply(items, pending[-1].position, names, frozenset(moved))
            if relocated:
                self._index.relocate(relocated)
        except Exception as exc:
            # Durable in the log but not indexed: stop; recovery replays it at the next open.
            self._fail(f"index update failed: {exc!r}")
            self._lose_index()
            return
        with self._indexed_cond:
            self._indexed = pending[-1].acked
            self._indexed_cond.notify_all()
        for p in pending:
            for r in p.requests:
                self._unindexed_requests.pop((r.tenant, r.request_id), None)

    def _drop_behind(self, written: int) -> None:
        """Hand the page cache of the log more than CACHE_BEHIND bytes behind the head back to
        the kernel (durable already), oldest first, at most about twice what was just written
        per batch. New pages for the next writes then come from the free list instead of
        reclaiming other cached files: on the VM with its page cache full, every MiB appended
        cost the writer 2 to 4 ms of CPU (direct reclaim), ~0.2 ms reusing its own dropped
        pages. The last CACHE_BEHIND bytes stay cached: a get after its put, a replica
        catching up, read them from memory (the VM's disk reads ~130 MB/s)."""
        cached = self._cached
        cached[-1][2] = self._head  # the head segment: cached up to the head
        self._cached_bytes += written
        budget = max(DROP_STEP, 2 * written)
        while budget > 0 and self._cached_bytes - CACHE_BEHIND >= DROP_STEP:
            entry = cached[0]
            path, start, stop = entry
            n = min(stop - start, budget, self._cached_bytes - CACHE_BEHIND)
            if n > 0:
                if len(cached) == 1:
                    assert self._fd is not None
                    self._fs.drop_cache(self._fd, start, n)
                else:
                    try:
                        fd = self._fs.open_read(path)
                    except OSError:  # compacted away meanwhile: nothing left to drop
                        n = stop - start
                    else:
                        try:
                            self._fs.drop_cache(fd, start, n)
                        finally:
                            self._fs.close(fd)
                entry[1] = start + n
                self._cached_bytes -= n
                budget -= n
            if entry[1] >= entry[2] and len(cached) > 1:
                cached.popleft()
            elif n <= 0:
                break

    def _free_bytes(self) -> int:
        try:
            st = os.statvfs(self._dir)  # one syscall per batch: noise next to the fdatasync
        except OSError:
            return INDEX_RESERVE_BYTES << 8  # cannot tell: let the write itself find out
        return st.f_bavail * st.f_frsize

    def _lose_index(self) -> None:
        with self._indexed_cond:
            self._index_lost = (f"{self.failed}; acknowledged records are durable in the log "
                                "but missing from the index until that restart replays them")
            self._indexed_cond.notify_all()

    def _refuse(self, batch: list[PendingCommit], exc: OSError, what: str) -> None:
        """ENOSPC refuses this batch only; any other error stops the store for good."""
        if exc.errno == errno.ENOSPC and self.failed is None:
            self._complete(batch, DiskFullError, "no space left on the data disk; nothing of "
                           "this write was acknowledged")
        else:
            self._fail(f"{what}: {exc}")
            self._complete(batch, StoreFailedError, self.failed or "")

    def _fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = (f"the store stopped after a storage failure ({why}); restart the "
                           "node after checking the disk")

    def _undo_partial_write(self) -> None:
        # Part of the batch may be on disk past the head: cut the segment back to the last
        # durable position (dropping its preallocation) so no stale frame survives, durably.
        if self._fd is None:
            return
        try:
            self._fs.truncate(self._fd, self._head)
            self._fs.fdatasync(self._fd)
        except OSError as exc:
            self._fail(f"could not undo a partial write after ENOSPC: {exc}")

    def _rotate(self) -> None:
        number = self._segment + 1
        final = self._path(number)
        spare, self._spare = self._spare, None
        if spare is not None:
            # Usually long done (it started at the previous rotation); if not, do not make
            # commits wait for zero-filling.
            spare.cancel()
        if spare is None or not spare.ok or spare.number != number:
            # Not ready in time (or failed): preallocate without zero-filling; raises ENOSPC.
            prepare_segment(self._fs, final, number, self._segment_bytes)
        self._fs.rename(spare_path(final), final)
        self._fs.sync_dir(self._dir)
        fd = self._fs.open_write(final)
        if self._fd is not None:
            self._fs.close(self._fd)
        self._fd, self._segment, self._head = fd, number, F.SEGMENT_HEADER_SIZE
        self._cached.append([final, 0, F.SEGMENT_HEADER_SIZE])
        self._position = (number, F.SEGMENT_HEADER_SIZE)
        # Zero-filling a segment takes a while: do the next one now, off the commit path.
        self._spare = _SparePreparer(self._fs, self._path(number + 1), number + 1,
                                     self._segment_bytes)

    def _complete(self, batch: list[PendingCommit], error: type[StoreError] | None,
                  message: str) -> None:
        for c in batch:
            if c.completed:
                continue
            c.completed = True
            # A fresh exception per waiter: one object raised in many tasks would share (and
            # scramble) its traceback.
            c.error = None if error is None else error(message)
            self.wakers.signal(c.waker)
