"""The store of one node: the public face of the log, the writer thread and the index."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import trio

from .._errors import (
    DiskFullError,
    IntegrityError,
    NotFound,
    StoreClosedError,
    StoreFailedError,
    StoreInUse,
)
from . import _format as F
from ._compact import CompactReport, SegmentGate, compact
from ._fds import DEFAULT_READ_FDS, ReadFds
from ._fs import FileSystem
from ._index import (
    WARM_MIN_KEYS,
    WARM_NAMES,
    Index,
    Location,
    VersionName,
    khash_of,
    new_generation,
)
from ._log import check_frame, check_frame_view
from ._records import (
    ChunkRecord,
    EncodedRecord,
    chunk_payload_view,
    decode_record,
    encode_record,
)
from ._recovery import Recovered, check_format, list_segments, recover, verify_log
from ._sealed import ReplicatedVersion, SealedVersion, Sealing, open_version, sealed_wire
from ._version import Version
from ._wake import SIGNALLED, Bell, WakerPool
from ._writer import LogWriter, PendingCommit

__all__ = ["CommitTicket", "EncodedCommit", "Record", "Store", "StoreStatistics"]

# What a commit takes: chunks, clear versions, and versions a peer replicated (sealed by it).
Record = ChunkRecord | Version | ReplicatedVersion

log = logging.getLogger("hdsd.store")

INDEX_NAME = "index.sqlite3"
LOCK_NAME = "LOCK"


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    segments: int
    disk_bytes: int  # size of the segment files on disk (preallocation included)
    bytes_written: int  # log bytes written (and fdatasync'd) since open
    records: int  # chunk and version records in the index
    commits: int  # commits made durable since open (commits of only known records excluded)
    batches: int  # group commits since open; commits / batches = records shared per fsync
    fsyncs: int  # fdatasyncs of batches since open
    last_fsync_seconds: float
    failed: bool  # fail-stop: no write will ever be accepted again by this instance
    head_segment: int
    head_offset: int
    replayed_records: int  # replayed from the log into the index at open
    torn_tails: tuple[str, ...]  # forensic copies of torn tails cut at open
    salvaged: tuple[str, ...] = ()  # damaged ranges set aside at open ("segment:start-end")


class Store:
    """A crash-safe log-structured store (see ``hdsd.store._log`` for the on-disk format).

    Writes go through ONE log-writer thread that group-commits: everything queued is written
    at once, made durable with one ``fdatasync``, acknowledged, then indexed; reads wait for
    the index to hold every acknowledged commit, so a commit is readable as soon as it
    returns. A commit is atomic: after a crash all of its records are there or none.

    Writing a chunk or version already in the index is skipped (it is durable already) and
    acknowledged at once; the same version twice is idempotent (union semantics; the first
    copy written wins if two differ in content, which callers must never do).

    After an fdatasync or write failure the store is stopped for good (fail-stop): every later
    commit raises :class:`StoreFailedError`; reads keep working (unless the index itself
    failed to take acknowledged records: then reads raise :class:`StoreFailedError` too
    rather than answer without them; a reopen replays them from the log). ENOSPC refuses
    only the batch it hit (:class:`DiskFullError`): the log is cut back to its last durable
    position and later writes are accepted again. Reads are thread-safe and cheap (one SQLite
    lookup; chunk reads one ``pread`` and a checksum).

    Deletion is a tombstone :class:`Version` built by the caller. A version is deleted for
    good by a purge record (a :class:`Version` with ``purges`` set, see ``_index``): its row
    leaves the index, its chunks are released (:meth:`release_purged`) and :meth:`compact`
    reclaims their records.
    """

    def __init__(self, directory: str, fs: FileSystem, index: Index, writer: LogWriter,
                 lock_fd: int, recovered: Recovered, sealing: Sealing,
                 read_fds: int = DEFAULT_READ_FDS) -> None:
        # Use Store.open(); this wires already-opened parts together.
        self._dir = directory
        self._sealing = sealing
        self._fs = fs
        self._index = index
        self._writer = writer
        self._lock_fd = lock_fd
        self._recovered = recovered
        self._closed = False
        self._read_fds = ReadFds(fs, directory, read_fds)
        self._segments = SegmentGate()  # compaction deletes segments only between reads
        self._compacting = threading.Lock()
        # The request ids indexed before this open go into the writer's filter in the
        # background (see ._seen); lookups ask the index until that is done.
        self._scan_stop = False
        self._scan = threading.Thread(target=self._scan_request_ids, name="hdsd-request-ids",
                                      daemon=True)
        self._scan.start()

    def _scan_request_ids(self) -> None:
        seen = self._writer.seen_requests
        try:
            for tenant, request_id in self._index.request_ids():
                if self._scan_stop:
                    return
                seen.add(tenant, request_id)
        except Exception as exc:  # closed or failed meanwhile: the index answers every lookup
            log.warning("event=request_id_scan_failed error=%r", exc)
            return
        seen.ready = True

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, sealing: Sealing,
             segment_bytes: int = 256 << 20, fs: FileSystem | None = None,
             verify: bool = False, salvage: bool = False,
             read_fds: int = DEFAULT_READ_FDS) -> Store:
        """Open the store at *path*, creating it if missing, and run recovery.

        *sealing* gives each tenant's :class:`TenantSeal` (the node's keyring): versions are
        stored with bucket, key and metadata sealed under it, and read back through it.
        A store written by an older hdsd (log format 1, names in clear) is refused with
        :class:`StoreError` naming ``hdsd store migrate``.

        Raises :class:`CorruptLogError` if the log is damaged before its tail (a torn tail is
        cut and kept beside its segment as ``<segment>.torn-<offset>``). With *verify*, every
        record's checksum is checked too (reads the whole log; otherwise only what recovery
        replays is). :class:`StoreInUse` if another process has the store open. With
        *salvage*, damage met while replaying is set aside instead (see
        ``_recovery.recover``; ``statistics().salvaged`` lists the ranges, whose records
        must come back from a replica). *read_fds* bounds the segment read descriptors kept
        open (see ``_fds``).
        """
        if not F.SEGMENT_HEADER_SIZE + F.FRAME_HEADER_SIZE < segment_bytes <= F.MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes out of range: {segment_bytes}")
        directory = os.path.abspath(os.fspath(path))
        fs = fs or FileSystem()
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
            fs.sync_dir(os.path.dirname(directory))
        lock_fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                          0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StoreInUse(f"the store at {directory} is open in another process (another "
                             "hdsd serve with this data directory?)") from None
        index: Index | None = None
        try:
            check_format(fs, directory)
            index = Index(os.path.join(directory, INDEX_NAME), sealing)
            recovered = recover(fs, directory, index, segment_bytes, salvage=salvage)
            if verify:
                verify_log(fs, directory, (recovered.head_segment, recovered.head_offset))
            index.set_clean(False)
            writer = LogWriter(directory=directory, fs=fs, index=index,
                               segment_bytes=segment_bytes,
                               head_segment=recovered.head_segment,
                               head_offset=recovered.head_offset)
        except BaseException as exc:
            if index is not None:
                index.close()
            os.close(lock_fd)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left to open the store: {exc}") from exc
            raise
        return cls(directory, fs, index, writer, lock_fd, recovered, sealing, read_fds)

    @property
    def sealing(self) -> Sealing:
        """The tenants' seals this store was opened with."""
        return self._sealing

    def close(self) -> None:
        """Write what is already queued, stop the writer thread, release every file."""
        if self._closed:
            return
        self._closed = True
        self._scan_stop = True
        self._scan.join()
        self._writer.close()
        if self._writer.failed is None:
            self._index.set_clean(True)
        self._read_fds.close_all()
        self._index.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- writes ---------------------------------------------------------------------------
    def _encode(self, records: Sequence[Record]) -> list[EncodedRecord]:
        """The records not known yet, encoded (empty: nothing to write)."""
        self._check_open()
        if self._writer.failed is not None:
            raise StoreFailedError(self._writer.failed)
        encoded: list[EncodedRecord] = []
        seen: set[tuple[object, ...]] = set()
        # No wait_indexed() here: a record whose batch was acknowledged a moment ago and is
        # not in the index yet is written again, like one still in flight; applying it is
        # idempotent. Waiting would put the previous batch's index update back on the path.
        for r in records:
            if isinstance(r, ChunkRecord):
                name: tuple[object, ...] = (r.tenant, r.chunk_id)
                # A chunk a purge released is written again: the copy here may be reclaimed.
                known = (self._index.chunk_location(r.tenant, r.chunk_id) is not None
                         and not self._index.is_released(r.tenant, r.chunk_id))
            else:
                v = r.version if isinstance(r, ReplicatedVersion) else r
                # The tenant's seal and the name id, looked up once: the sealing below uses
                # them again (every replicated version passes here, on the event loop).
                seal = self._index.seal(v.tenant)
                nid = seal.name_id(v.bucket, v.key)
                name = (v.tenant, nid, v.hlc, v.node)
                # A purged version is never written again (the index would refuse it).
                known = (self._index.has_version(v.tenant, nid, v.hlc, v.node)
                         or (v.purges is None
                             and self._index.is_purged(v.tenant, nid, v.hlc, v.node)))
                if known or name in seen:
                    continue
                seen.add(name)
                encoded.append(encode_record(r, seal=seal, name_id=nid))
                continue
            if known or name in seen:
                continue
            seen.add(name)
            encoded.append(encode_record(r, self._sealing))
        return encoded

    async def commit(self, records: Sequence[Record]) -> None:
        """Make *records* durable (fdatasync'd) and indexed, sharing one fsync with concurrent
        commits. Raises :class:`StoreFailedError` after a storage failure (now or earlier),
        :class:`DiskFullError` on ENOSPC, :class:`StoreClosedError` after close,
        :class:`InvalidRequest` for a record that cannot be encoded.

        Cancelled while waiting, the records may or may not have become durable: retry with
        the same version (idempotent) to be sure.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.start_commit(records).wait()

    def start_commit(self, records: Sequence[Record], bell: Bell | None = None) -> CommitTicket:
        """:meth:`commit` in two steps, so a caller can do other I/O (a replica's round trip)
        while the log writer syncs, without a task: the records are queued now; ``await
        ticket.wait()`` returns once they are durable (or raises as :meth:`commit` does).
        A ticket that will not be waited for must be given up with ``ticket.abandon()``.
        Errors found before queueing (closed, failed, unencodable) are raised here.

        With *bell* (:meth:`bell`), its ticket is not waited for: *bell* is rung once the
        records are durable (or failed), then ``ticket.done()`` is true and
        ``ticket.result()`` returns (or raises the error)."""
        return self.start_encoded(EncodedCommit(self._encode(records)), bell=bell)

    def bell(self) -> Bell:
        """A bell for :meth:`start_commit`: one eventfd a task waits on for many commits,
        answered in the order they were queued (a peer connection's acknowledger). Close it
        (``bell.close()``) once nothing waits on it; commits still queued finish anyway."""
        return self._writer.wakers.bell()

    def encode_commit(self, records: Sequence[Record]) -> EncodedCommit:
        """The first half of :meth:`start_commit`, for a worker thread: the index lookups
        that drop records already held, the sealing and the checksums of the rest. A bulk
        writer (a rebuild: thousands of versions and megabytes of chunks a second) keeps
        that work off the event loop; :meth:`start_encoded` then queues the result. Raises
        what :meth:`start_commit` raises before queueing. Blocking."""
        return EncodedCommit(self._encode(records))

    def start_encoded(self, commit: EncodedCommit, chunks: Sequence[ChunkRecord] = (), *,
                      bell: Bell | None = None) -> CommitTicket:
        """:meth:`start_commit` of records :meth:`encode_commit` encoded, after *chunks*
        encoded now (in the same batch). One queued a moment after its encoding may repeat a
        record another commit wrote meanwhile: harmless, indexing a record is idempotent (as
        for a record still in flight)."""
        self._check_open()
        if self._writer.failed is not None:
            raise StoreFailedError(self._writer.failed)
        encoded = [*self._encode(chunks), *commit.records] if chunks else commit.records
        if not encoded:
            return CommitTicket(self._writer.wakers, None)
        wakers = self._writer.wakers
        pending = PendingCommit(encoded, _frames_size(encoded),
                                wakers.for_trio() if bell is None else wakers.for_bell(bell))
        try:
            self._writer.submit(pending)
        except BaseException:
            wakers.release(pending.waker)
            raise
        return CommitTicket(wakers, pending)

    def node_busy(self, busy: bool) -> None:
        """Tell the store whether its node serves exactly one request: its batches' index
        updates then wait for that request's end (see :meth:`LogWriter.node_busy`). Never
        blocks."""
        self._writer.node_busy(busy)

    def commit_sync(self, records: Sequence[Record]) -> None:
        """:meth:`commit` for threads: blocks until durable and indexed (or raises)."""
        encoded = self._encode(records)
        if encoded:
            self._writer.commit_blocking(encoded, _frames_size(encoded))

    # --- reads ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    def _check_readable(self) -> None:
        """For reads of the index: open, and holding every acknowledged commit."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        self._writer.wait_indexed()

    def has_chunk(self, tenant: str, chunk_id: bytes) -> bool:
        self._check_readable()
        return self._index.chunk_location(tenant, chunk_id) is not None

    def read_chunk(self, tenant: str, chunk_id: bytes) -> bytes:
        """The payload of a chunk; :class:`NotFound` if absent, :class:`IntegrityError` if its
        log record fails its checksum (repair it from the other site)."""
        payload = self.read_chunk_view(tenant, chunk_id)
        return payload if type(payload) is bytes else bytes(payload)

    def read_chunk_view(self, tenant: str, chunk_id: bytes) -> bytes | memoryview:
        """:meth:`read_chunk` for a reader that only reads the payload (decrypts it): a view
        of the record as read from the log, not a copy — one megabyte copy fewer per chunk of
        a streaming get. Same checks, same errors."""
        self._check_readable()
        loc, data = self._read_located(tenant, chunk_id)
        return self._chunk_view(tenant, chunk_id, loc, data)

    def read_chunk_now(self, tenant: str, chunk_id: bytes) -> bytes | memoryview | None:
        """:meth:`read_chunk_view`'s answer if it can be read without waiting — every byte
        of the record in the page cache, no compaction holding the segments — for the event
        loop; None otherwise (read it with :meth:`read_chunk_view`, in a worker thread).
        Same checks, same errors."""
        self._check_readable()
        loc = self._index.chunk_location(tenant, chunk_id)
        if loc is None:
            raise NotFound(f"chunk {chunk_id.hex()} not found")
        if not self._segments.enter_now():
            return None
        try:
            with self._read_fds.use(loc.segment) as fd:
                data = self._fs.pread_cached(fd, loc.length, loc.offset)
        except FileNotFoundError:
            return None  # compaction moved it since the lookup: the thread's read looks again
        finally:
            self._segments.leave()
        return None if data is None else self._chunk_view(tenant, chunk_id, loc, data)

    def _chunk_view(self, tenant: str, chunk_id: bytes, loc: Location,
                    data: bytes) -> bytes | memoryview:
        name = F.segment_name(loc.segment)
        kind, body = check_frame_view(name, loc.offset, data)
        if kind == F.KIND_CHUNK:
            payload = chunk_payload_view(body, tenant, chunk_id)
            if payload is not None:
                return payload
        record = decode_record(kind, body)
        if (not isinstance(record, ChunkRecord) or record.tenant != tenant
                or record.chunk_id != chunk_id):
            raise IntegrityError(f"log record at {name}:{loc.offset} is not chunk "
                                 f"{chunk_id.hex()}")
        return record.payload

    def _read_located(self, tenant: str, chunk_id: bytes) -> tuple[Location, bytes]:
        loc = self._index.chunk_location(tenant, chunk_id)
        if loc is None:
            raise NotFound(f"chunk {chunk_id.hex()} not found")
        try:
            return loc, self._pread(loc)
        except FileNotFoundError:
            # Compaction moved the chunk and deleted its segment since the lookup: once more.
            loc = self._index.chunk_location(tenant, chunk_id)
            if loc is None:
                raise NotFound(f"chunk {chunk_id.hex()} not found") from None
            return loc, self._pread(loc)

    def _pread(self, loc: Location) -> bytes:
        with self._segments.reading(), self._read_fds.use(loc.segment) as fd:
            return self._fs.pread(fd, loc.length, loc.offset)

    def versions(self, tenant: str, bucket: str, key: str) -> list[Version]:
        """Every version of a key, ascending ``(hlc, node)``; tombstones and purge records
        included (a purged version itself is gone: :func:`visible_versions` gives what a reader
        is shown, once replicas' answers are merged)."""
        self._check_readable()
        return self._index.versions(tenant, bucket, key)

    def current(self, tenant: str, bucket: str, key: str) -> Version | None:
        """The greatest version of a key that is not a purge or retention record (its head:
        may be a tombstone), or None."""
        self._check_readable()
        return self._index.current(tenant, bucket, key)

    def get_version(self, tenant: str, bucket: str, key: str, hlc: int,
                    node: str) -> Version | None:
        self._check_readable()
        return self._index.get_version(tenant, bucket, key, hlc, node)

    def list_current(self, tenant: str, bucket: str, *, prefix: str = "", after: str = "",
                     limit: int = 1000, include_deleted: bool = False) -> list[Version]:
        """The current version of each key starting with *prefix* and greater than *after*,
        ascending by key, at most *limit*; keys whose current version is a tombstone are
        skipped unless *include_deleted*. Next page: ``after=`` the last key returned."""
        self._check_readable()
        return self._index.list_current(tenant, bucket, prefix, after, max(limit, 0),
                                        include_deleted)

    def is_purged(self, tenant: str, bucket: str, key: str, hlc: int, node: str) -> bool:
        """True if a purge record of this version was indexed here: the version is gone for
        good, and a copy arriving again (repair, a late hint) is refused."""
        self._check_readable()
        return self._index.is_purged(tenant, self.name_id(tenant, bucket, key), hlc, node)

    @property
    def generation(self) -> int:
        """Moves whenever a commit may have changed the versions this store holds (a write, a
        replicated or repaired copy, a purge, a tenant or keys forgotten); equal readings mean
        nothing changed in between, so a figure computed from the versions is still exact.
        While an acknowledged commit waits for its index update, each reading is new (a read
        of the index waits for that update: what it computes from covers the commit, and the
        index's own generation moves when it is applied)."""
        if not self._writer.all_indexed():
            return new_generation()
        return self._index.generation

    @property
    def purges_applied(self) -> int:
        """Versions purge records dropped from this index since it was opened (compaction
        looks at every sealed segment again when this moved: their records are garbage)."""
        return self._index.purges_applied

    def release_purged(self, grace_s: float) -> int:
        """Unindex chunks purges released more than *grace_s* seconds ago and no version here
        names any more (blocking; run before :meth:`compact`, which then reclaims them).
        The grace covers a put that found such a chunk already stored just before the purge
        and commits its version later: an upload lasts less than this. Returns how many."""
        self._check_readable()
        return self._index.release_purged(time.time() - grace_s)

    def list_versions(self, tenant: str, bucket: str, *, prefix: str = "",
                      after: tuple[str, int, str] | None = None,
                      limit: int = 1000) -> list[Version]:
        """Every version of keys starting with *prefix*, ordered ``(key, hlc, node)``, those
        after the cursor *after* = ``(key, hlc, node)`` of the last one returned."""
        self._check_readable()
        return self._index.list_versions(tenant, bucket, prefix, after, max(limit, 0))

    def warm_listings(self, stop: Callable[[], bool], *, max_names: int = WARM_NAMES,
                      min_keys: int = WARM_MIN_KEYS) -> tuple[int, int]:
        """Build the listing caches of the largest buckets ahead of their first listing (see
        :meth:`Index.warm_listings`); (buckets, names) cached. Blocking: a worker thread."""
        self._check_readable()
        return self._index.warm_listings(stop, max_names=max_names, min_keys=min_keys)

    def buckets(self, tenant: str, *, after: str = "", limit: int | None = None) -> list[str]:
        """Buckets of *tenant* holding at least one version, ascending, those greater than
        *after*, at most *limit* (None: all)."""
        self._check_readable()
        return self._index.buckets(tenant, after, limit)

    def tenant_usage(self) -> dict[str, int]:
        """Logical bytes of each tenant's current versions in this store (reads every head:
        call it from a worker thread, and not per request)."""
        self._check_readable()
        return self._index.tenant_usage()

    def find_request(self, tenant: str, request_id: bytes) -> Version | None:
        """The version a request id wrote (first one stored), so a retry is applied once.

        Sees every commit acknowledged before the call without waiting for the index (this
        is on every put's path): acknowledged-but-unindexed request ids are kept aside."""
        self._check_open()
        if not request_id:
            return None
        # This order: an entry leaves the side table only after its index commit.
        recent = self._writer.find_unindexed_request(tenant, request_id)
        if recent is None and not self._writer.seen_requests.may_hold(tenant, request_id):
            return None  # never committed here (see ._seen): no index query
        return self._index.find_request(tenant, request_id) or recent

    def max_hlc(self) -> int:
        """The highest HLC ever stored (0 if none): the clock's floor after a restart."""
        self._check_readable()
        return self._index.max_hlc()

    def iter_versions(self) -> Iterator[Version]:
        """Every version, in storage order (for repair and anti-entropy)."""
        self._check_readable()
        return self._index.iter_versions()

    def verify_log(self) -> int:
        """Check the checksum of every record in the log (reads all of it); returns the number
        of batches checked, raises :class:`CorruptLogError` at the first damage."""
        self._check_open()
        return verify_log(self._fs, self._dir, self._writer.head)

    # -- anti-entropy and scrub -----------------------------------------------------------------
    def version_names_since(self, after_vid: int, limit: int = 10_000, *,
                            with_names: bool = False) -> list[VersionName]:
        """The versions indexed after *after_vid*, ascending (vids only grow; follow the last
        one returned): vid, tenant, name id, hlc, node, key hash, and with *with_names* the
        bucket and key (None for a tenant without a key here)."""
        self._check_readable()
        return self._index.version_names_since(after_vid, limit, with_names=with_names)

    def name_id(self, tenant: str, bucket: str, key: str) -> bytes:
        """The keyed id of a key's name (the same on every node: the tenant's key is);
        :class:`PermissionDenied` if the tenant has no key here."""
        return self._index.seal(tenant).name_id(bucket, key)

    def key_hash(self, tenant: str, bucket: str, key: str) -> int:
        """The 32-bit anti-entropy hash of a key (see :func:`khash_of`)."""
        return khash_of(self.name_id(tenant, bucket, key))

    def versions_by_key_hash(self, low: int, high: int) -> list[tuple[int, bytes, Version]]:
        """``(vid, name id, version)`` of every version whose :meth:`key_hash` is in
        ``[low, high]`` (versions of tenants without a key here are left out)."""
        self._check_readable()
        return self._index.versions_by_key_hash(low, high)

    def chunk_locations(self, after: tuple[str, bytes] | None, limit: int = 1000
                        ) -> list[tuple[str, bytes, Location]]:
        """Indexed chunks in ``(tenant, chunk_id)`` order after *after* (scrub walks these)."""
        self._check_readable()
        return self._index.chunk_locations(after, limit)

    def version_locations(self, after_vid: int, limit: int = 1000
                          ) -> list[tuple[int, Version | IntegrityError, Location]]:
        self._check_readable()
        return self._index.version_locations(after_vid, limit)

    def check_record(self, loc: Location) -> None:
        """Re-read the log record at *loc* and check its checksum and encoding;
        :class:`IntegrityError` (or :class:`CorruptLogError`) if it rotted. Returns quietly
        if compaction deleted the segment since *loc* was read: the record lives elsewhere."""
        self._check_open()
        name = F.segment_name(loc.segment)
        try:
            data = self._pread(loc)
        except FileNotFoundError:
            return
        frame = check_frame(name, loc.offset, data)
        record = decode_record(frame.kind, frame.body)
        if isinstance(record, SealedVersion):
            seal = self._sealing.seal_for(record.tenant)
            if seal is not None:  # the names must still open, not just the frame check
                open_version(record.body, seal)

    def quarantine_chunk(self, tenant: str, chunk_id: bytes, loc: Location, reason: str) -> bool:
        """Unindex a damaged chunk record: reads of the chunk then go to another replica, and
        committing a good copy indexes that copy. The damaged range stays in the log (the
        ``quarantine`` table remembers it). True if *loc* was still the chunk's location."""
        self._check_readable()
        return self._index.quarantine_chunk(tenant, chunk_id, loc, reason)

    def index_instance(self) -> str:
        """A random id of this index file: a rebuilt index (deleted, replayed from the log,
        salvaged) gets a new one, so state derived from row ids knows to start over."""
        return self._index.instance()

    def quarantined(self) -> int:
        self._check_readable()
        return self._index.quarantined()

    def recent_fsyncs(self) -> tuple[tuple[float, int], ...]:
        """The last few hundred group commits, oldest first: (fdatasync seconds, records in
        the batch). Cheap (no I/O); for latency percentiles in status and metrics."""
        return tuple(self._writer.recent_fsyncs)

    def forget_keys(self, keys: Iterable[tuple[str, str, str]]) -> tuple[int, int]:
        """Forget every version of *keys* and the chunks only they name (blocking): the keys
        moved to other nodes, which were asked first (the caller's duty). Returns (versions,
        chunks) forgotten; :meth:`compact` reclaims their space. A chunk another version
        still names (deduplicated content) is kept."""
        self._check_readable()
        wanted = set(keys)
        if not wanted:
            return 0, 0
        tenants = {t for t, _, _ in wanted}
        kept: set[tuple[str, bytes]] = set()
        for v in self._index.iter_versions():
            if v.tenant in tenants and (v.tenant, v.bucket, v.key) not in wanted:
                kept.update((v.tenant, c) for c in v.chunks)
        return self._index.forget_keys(sorted(wanted),
                                       lambda tenant, chunk: (tenant, chunk) in kept)

    def compact(self, dead_tenants: frozenset[str] = frozenset(), *, after_segment: int = 0,
                min_garbage: float = 0.25) -> CompactReport:
        """Reclaim the space of garbage in sealed segments above *after_segment*: records of
        *dead_tenants* (shredded) and copies the index no longer uses. Blocking (run it in a
        thread); reads and commits go on meanwhile. See ``_compact``."""
        self._check_readable()
        with self._compacting:
            return compact(directory=self._dir, fs=self._fs, index=self._index,
                           writer=self._writer, delete_segment=self._delete_segment,
                           dead_tenants=dead_tenants, after_segment=after_segment,
                           min_garbage=min_garbage)

    def _delete_segment(self, number: int) -> None:
        """Delete a sealed segment compaction emptied, once no read is using its file."""
        path = os.path.join(self._dir, F.segment_name(number))
        with self._segments.exclusive():
            fd = self._read_fds.pop(number, None)
            if fd is not None:
                self._fs.close(fd)
            self._fs.unlink(path)

    def statistics(self) -> StoreStatistics:
        self._check_open()
        try:
            self._writer.wait_indexed()  # so *records* counts every acknowledged commit
        except StoreFailedError:
            pass  # still report, with failed=True
        numbers = list_segments(self._fs, self._dir)
        disk = segments = 0
        for n in numbers:
            try:
                disk += os.path.getsize(os.path.join(self._dir, F.segment_name(n)))
                segments += 1
            except FileNotFoundError:
                pass  # removed by a compaction (in its thread) since the listing
        w = self._writer
        seg, off = w.head
        return StoreStatistics(
            segments=segments, disk_bytes=disk, bytes_written=w.bytes_written,
            records=self._index.record_count(), commits=w.commits, batches=w.batches,
            fsyncs=w.fsyncs, last_fsync_seconds=w.last_fsync_seconds,
            failed=w.failed is not None, head_segment=seg, head_offset=off,
            replayed_records=self._recovered.replayed_records,
            torn_tails=self._recovered.torn_tails, salvaged=self._recovered.salvaged)


@dataclass(frozen=True, slots=True)
class EncodedCommit:
    """Records encoded by :meth:`Store.encode_commit`, ready for :meth:`Store.start_encoded`
    (empty: nothing new to write)."""

    records: list[EncodedRecord]

    def __len__(self) -> int:
        return len(self.records)

    def wire_versions(self, versions: Sequence[Version]) -> list[dict[str, Any]]:
        """The maps that replicate *versions* to a peer: those this commit sealed as their
        sealed record plus the clear names (the peer stores the record as sealed here instead
        of sealing the names again, see ``_sealed``), the others (already stored here) clear."""
        sealed = {id(e.clear): e.record for e in self.records
                  if e.clear is not None and isinstance(e.record, SealedVersion)}
        return [v.to_wire() if (record := sealed.get(id(v))) is None else sealed_wire(record, v)
                for v in versions]


class CommitTicket:
    """A queued commit (see :meth:`Store.start_commit`): wait for it once, or abandon it."""

    __slots__ = ("_pending", "_wakers")

    def __init__(self, wakers: WakerPool, pending: PendingCommit | None) -> None:
        self._wakers = wakers
        self._pending = pending  # None: nothing to write, or already waited for / abandoned

    async def wait(self) -> None:
        """Return once the records are durable; raise the store's error otherwise. Cancelled,
        the records may or may not become durable, and the ticket is spent."""
        pending, self._pending = self._pending, None
        if pending is None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._wakers.wait(pending.waker)
        if pending.error is not None:
            raise pending.error

    def done(self) -> bool:
        """Whether the commit is over (durable or failed): :meth:`result` then answers at
        once. The test for a ticket of a :class:`Bell`, read after each ring."""
        pending = self._pending
        return pending is None or pending.waker.state == SIGNALLED

    def result(self) -> None:
        """Once :meth:`done`: return if the records are durable, else raise the store's
        error. The ticket is spent."""
        pending = self._pending
        if pending is None:
            return
        if pending.waker.state != SIGNALLED:  # a caller's bug: never read as durable
            raise RuntimeError("the commit is not over yet (see CommitTicket.done)")
        self._pending = None
        self._wakers.abandon(pending.waker)  # a plain waker's eventfd back to the pool
        if pending.error is not None:
            raise pending.error

    def abandon(self) -> None:
        """Give up waiting (no-op once waited for); the commit itself goes on."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._wakers.abandon(pending.waker)


def _frames_size(encoded: list[EncodedRecord]) -> int:
    return sum(F.FRAME_HEADER_SIZE + e.size for e in encoded)
