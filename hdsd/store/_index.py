"""The SQLite index: a rebuildable cache of the log, mapping names to log positions.

WAL mode with ``synchronous=NORMAL``: an index transaction may be lost at a power cut, which is
harmless because the log is the truth and the applied position (kept in the same transaction as
the rows it covers) says where replay must resume. One connection per thread: the log writer
owns the writing connection; every reading thread gets its own, so reads never wait for a
commit. ``secure_delete`` is on: freed pages are zeroed, not left for a disk image to read.

No name is stored in clear (format 2, see docs/design-notes.md, *Names sealed at rest*): rows
are keyed by the tenant, the keyed 16-byte *bucket id* and *name id* of the tenant's
:class:`~hdsd.store.TenantSeal` (so point lookups cost one keyed hash more than before), and
``body`` is the sealed record body of the log. Listings in key order need the names: the first
listing of a bucket opens the names of its keys (one AEAD open per key) into an in-memory
sorted list, which the log writer then keeps current; pages are then looked up by name id.

HLCs are unsigned 64-bit but SQLite integers are signed: they are stored shifted by -2**63,
which keeps their order. Key order is Python's ``str`` order (code points), which is UTF-8
byte order: the same order SQL ``ORDER BY key`` gave before names were sealed.
"""

from __future__ import annotations

import bisect
import itertools
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from .._errors import IntegrityError, StoreError
from .._packing import PackError, unpackb
from ._records import ChunkRecord, StoredRecord
from ._sealed import SealedVersion, Sealing, TenantSeal, open_names, open_version, seal_for
from ._version import Version

__all__ = ["WARM_MIN_KEYS", "WARM_NAMES", "AppliedPosition", "Index", "Location", "VersionName",
           "khash_of"]

_HLC_SHIFT = 1 << 63
# Every index of the process draws its generations from this one counter, so a store that was
# closed and opened again never shows a generation a caller remembered from before.
_GENERATIONS = itertools.count(1)


def new_generation() -> int:
    """A generation no index of this process has shown or will show."""
    return next(_GENERATIONS)
# 3: heads keyed (tenant, bid, nid) — a listing's bucket range is the table's own order —
# and no secondary index on the key hash; a format-2 index is upgraded at open (_upgrade_2).
INDEX_FORMAT = 3
# Listing caches hold at most this many key names in all (least recently listed buckets are
# dropped first): about 100 bytes each.
CACHED_NAMES = 2_000_000
# What a node warms at start (Index.warm_listings): buckets whose first listing would open at
# least this many names, largest first, up to a quarter of the caches' capacity.
WARM_MIN_KEYS = 5_000
WARM_NAMES = CACHED_NAMES // 4
# A cached bucket keeps the names written since its last listing apart (the next listing
# merges them). Beyond a quarter of its names, and at least this many, its cache is dropped
# instead: puts into a bucket no one lists again (one warmed at start) must not grow it
# without end. The next listing opens its names again.
PENDING_NAMES_MIN = 4096
_INLINE_TYPES = (bytes, type(None))  # a clear version holding a view is not kept
_PAGE_KEYS = 256  # names looked up per SQL statement while paging a listing
_WARM_CHECK = 256  # names opened between two looks at a warm-up's stop flag

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format INTEGER NOT NULL,
    segment INTEGER NOT NULL,     -- applied position: end of the last applied batch
    offset INTEGER NOT NULL,
    last_frame INTEGER NOT NULL,  -- offset of that batch's COMMIT frame (-1: none)
    max_hlc INTEGER NOT NULL,     -- shifted like versions.hlc
    records INTEGER NOT NULL,
    clean INTEGER NOT NULL        -- 1: closed cleanly, nothing written past the position
);
CREATE TABLE IF NOT EXISTS chunks (
    tenant TEXT NOT NULL, chunk_id BLOB NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY (tenant, chunk_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    vid INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    bid BLOB NOT NULL,            -- keyed id of the bucket name
    nid BLOB NOT NULL,            -- keyed id of (bucket, key)
    hlc INTEGER NOT NULL, node TEXT NOT NULL,
    request_id BLOB NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    body BLOB NOT NULL,           -- the sealed record body, as in the log
    khash INTEGER NOT NULL        -- top 32 bits of nid: anti-entropy leaves
);
CREATE UNIQUE INDEX IF NOT EXISTS versions_by_name ON versions (tenant, nid, hlc, node);
CREATE INDEX IF NOT EXISTS versions_by_request ON versions (tenant, request_id)
    WHERE request_id != x'';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    tenant TEXT NOT NULL, chunk_id BLOB NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS heads (
    tenant TEXT NOT NULL, nid BLOB NOT NULL, bid BLOB NOT NULL,
    hlc INTEGER NOT NULL, node TEXT NOT NULL, tombstone INTEGER NOT NULL, vid INTEGER NOT NULL,
    PRIMARY KEY (tenant, bid, nid)   -- a bucket's heads are a range (listings)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS purges (
    tenant TEXT NOT NULL, nid BLOB NOT NULL,
    hlc INTEGER NOT NULL, node TEXT NOT NULL,  -- the purged version (shifted hlc)
    vid INTEGER NOT NULL,                      -- the purge record's row in versions
    PRIMARY KEY (tenant, nid, hlc, node, vid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS released (
    tenant TEXT NOT NULL, chunk_id BLOB NOT NULL,
    at REAL NOT NULL,                          -- when a purge left the chunk unnamed
    PRIMARY KEY (tenant, chunk_id)
) WITHOUT ROWID;
"""

# Format 2 -> 3, in one transaction (a crash leaves format 2, upgraded again at the next open).
# Every B-tree a new version touches is a random page written to the WAL (and again at the
# checkpoint), and the writer thread's share of a small put is mostly those pages: format 3
# has two fewer per version. ``versions_by_khash`` served only anti-entropy's leaf ranges,
# which ``versions_by_name`` answers per tenant (a key hash is the top of the name id);
# ``heads_by_bucket`` served listings, which the heads' own order now does. Every point
# lookup of a head knows its bucket id (the bucket name is in every request).
_UPGRADE_2 = (
    """CREATE TABLE heads_3 (
    tenant TEXT NOT NULL, nid BLOB NOT NULL, bid BLOB NOT NULL,
    hlc INTEGER NOT NULL, node TEXT NOT NULL, tombstone INTEGER NOT NULL, vid INTEGER NOT NULL,
    PRIMARY KEY (tenant, bid, nid)
) WITHOUT ROWID""",
    "INSERT INTO heads_3 (tenant, nid, bid, hlc, node, tombstone, vid)"
    " SELECT tenant, nid, bid, hlc, node, tombstone, vid FROM heads ORDER BY tenant, bid, nid",
    "DROP TABLE heads",  # and heads_by_bucket with it
    "ALTER TABLE heads_3 RENAME TO heads",
    "DROP INDEX IF EXISTS versions_by_khash",
    "UPDATE state SET format = 3",
)

_INSERT_VERSION = (
    "INSERT OR IGNORE INTO versions (tenant, bid, nid, hlc, node, request_id, segment, offset,"
    " length, body, khash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# A key's head moves to a version just inserted if it is greater (found by its name:
# executemany has no lastrowid).
_UPSERT_HEAD_OF_ROW = """
INSERT INTO heads (tenant, nid, bid, hlc, node, tombstone, vid)
SELECT tenant, nid, bid, hlc, node, ?, vid FROM versions
WHERE tenant = ? AND nid = ? AND hlc = ? AND node = ?
ON CONFLICT (tenant, bid, nid) DO UPDATE SET
    hlc = excluded.hlc, node = excluded.node, tombstone = excluded.tombstone, vid = excluded.vid
WHERE (excluded.hlc, excluded.node) > (heads.hlc, heads.node)
"""


@dataclass(frozen=True, slots=True)
class Location:
    segment: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class AppliedPosition:
    segment: int  # 0: nothing applied yet
    offset: int
    last_frame: int


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=60000")
    # Deleted rows (a shredded tenant's) are zeroed, not left in free pages for a disk image.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def khash_of(name_id: bytes) -> int:
    """The 32-bit anti-entropy hash of a key: the top bits of its keyed name id, so every
    version of a key falls in the same Merkle leaf, and both sites (same tenant keys) agree."""
    return int.from_bytes(name_id[:4], "big")


#: Page cache of each reading connection (KiB; SQLite's default is 2,000). There is one per
#: thread that reads (trio's worker threads: up to 40), so this bounds most of the index's
#: memory; the kernel's page cache holds the rest of the file.
READER_CACHE_KIB = 1024
# Keys' heads kept opened in memory (Index.current: a small get's lookup), at most about this
# many bytes in all (an inline payload counts whole), oldest first out; a head over a 64th of
# it is not kept.
HEAD_CACHE_BYTES = 8 << 20
_HEAD_OVERHEAD = 600  # what an entry costs besides its inline payload and chunk ids (bytes)


class _Held:
    """A thread's reading connection. A worker thread that ends (trio retires idle ones after
    10 s and starts new ones under load) drops its thread-locals, and with them this holder:
    the connection is closed then, instead of being kept open — memory and three descriptors
    each — for the life of the process."""

    __slots__ = ("conn", "owner")

    def __init__(self, conn: sqlite3.Connection, owner: set[sqlite3.Connection],
                 lock: threading.RLock) -> None:
        self.conn = conn
        self.owner = (owner, lock)

    def __del__(self) -> None:
        owner, lock = self.owner
        with lock:
            if self.conn not in owner:
                return  # the index closed it already
            owner.discard(self.conn)
        self.conn.close()



class VersionName(NamedTuple):
    """What anti-entropy follows of each indexed version (names only when asked for)."""

    vid: int
    tenant: str
    name_id: bytes
    hlc: int
    node: str
    khash: int
    bucket: str | None
    key: str | None


def _holds(ordered: list[str], key: str) -> bool:
    i = bisect.bisect_left(ordered, key)
    return i < len(ordered) and ordered[i] == key


def _chunks_of(body: bytes) -> tuple[bytes, ...]:
    """The chunks a sealed version record body names in the log (clear fields; an inline
    version's content is in the record itself)."""
    try:
        wire = unpackb(body)
        return () if wire["i"] is not None else tuple(wire["m"])
    except (PackError, KeyError, TypeError) as exc:
        raise IntegrityError(f"malformed version record: {exc}") from None


def _is_control(body: bytes) -> bool:
    try:
        wire = unpackb(body)
        return wire.get("p") is not None or wire.get("q") is not None
    except (PackError, AttributeError) as exc:
        raise IntegrityError(f"malformed version record: {exc}") from None


def _tombstone_of(body: bytes) -> bool:
    try:
        return bool(unpackb(body)["x"])
    except (PackError, KeyError, TypeError) as exc:
        raise IntegrityError(f"malformed version record: {exc}") from None


def _size_of(body: bytes) -> int:
    try:
        size = unpackb(body)["s"]
    except (PackError, KeyError, TypeError) as exc:
        raise IntegrityError(f"malformed version record: {exc}") from None
    return int(size)


class _WarmStopped(Exception):
    """A background warm-up was told to stop (the node is stopping)."""


class _BucketNames:
    """The key names of one bucket, sorted (a listing's view), plus those the log writer
    indexed since: merged into a new sorted list by the next listing, never in place, so a
    listing reads a list no one mutates."""

    __slots__ = ("keys", "pending")

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.pending: set[str] = set()


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string starting with *prefix* (None: no bound)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored as UTF-8
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _name_id_pages(keys: list[str], start: int, prefix: str, bucket: str,
                   seal: TenantSeal) -> Iterator[list[bytes]]:
    """The name ids of the sorted *keys* from *start* on that begin with *prefix* (they are
    contiguous), :data:`_PAGE_KEYS` per page: one SQL statement each. Lazy, so a listing that
    fills its limit hashes no more names than it looks up."""
    i = start
    while True:
        page: list[str] = []
        while i < len(keys) and len(page) < _PAGE_KEYS and keys[i].startswith(prefix):
            page.append(keys[i])
            i += 1
        if not page:
            return
        yield [seal.name_id(bucket, k) for k in page]


class Index:
    def __init__(self, path: str, sealing: Sealing) -> None:
        self._path = path
        self._sealing = sealing
        self._local = threading.local()
        # Reentrant: a holder may be finalised (and take it) wherever its thread ends.
        self._lock = threading.RLock()
        self._readers: set[sqlite3.Connection] = set()
        # Listing caches, by (tenant, bucket id); one lock, held only for dict and set
        # operations (never while names are opened), so the log writer never waits long.
        self._names: OrderedDict[tuple[str, bytes], _BucketNames] = OrderedDict()
        self._building: dict[tuple[str, bytes], set[str]] = {}
        self._build_done: dict[tuple[str, bytes], threading.Event] = {}
        self._bucket_names: dict[tuple[str, bytes], str] = {}
        self._names_lock = threading.Lock()
        # Heads opened by reads, and those apply knows to be new heads: (tenant, bucket, key)
        # -> (name id, version, size). Only under _heads_lock is it written; _head_keys finds
        # an entry by the (tenant, name id) the writer knows. A read keeps what it read only if
        # the generation (_changed) did not move in between: it may have read the row before
        # that commit — see current and _heads_written.
        self._heads: OrderedDict[tuple[str, str, str], tuple[bytes, Version, int]] = \
            OrderedDict()
        self._head_keys: dict[tuple[str, bytes], tuple[str, str, str]] = {}
        self._heads_bytes = 0
        self._heads_lock = threading.Lock()
        self.writer = _connect(path)
        self._check_format()
        self.writer.executescript(_SCHEMA)
        self.writer.execute(
            "INSERT OR IGNORE INTO state VALUES (1, ?, 0, 0, -1, ?, 0, 0)",
            (INDEX_FORMAT, -_HLC_SHIFT))
        # Names this index file: derived state (Merkle snapshots) must not outlive a rebuild.
        self.writer.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)",
                            (os.urandom(8).hex(),))
        # Purges are rare: the write path looks for purged targets and released chunks only
        # once this index has any (set here, by apply, and by release_purged).
        self._any_purges = self.writer.execute("SELECT 1 FROM purges LIMIT 1").fetchone() \
            is not None
        self._any_released = self.writer.execute(
            "SELECT 1 FROM released LIMIT 1").fetchone() is not None
        self.purges_applied = 0  # purge records that dropped a version since open
        # The highest hlc of any indexed version, in memory: a version above it cannot be in
        # the index, so a commit of a new version (the hot path) skips its lookup. Only the
        # writer raises it, before its commit (a stale read is a lookup more, never less).
        (h,) = self.writer.execute("SELECT max_hlc FROM state").fetchone()
        self.indexed_max_hlc = int(h) + _HLC_SHIFT
        # Moves after every commit that may change the versions indexed (see :meth:`_changed`).
        self.generation = new_generation()

    def _check_format(self) -> None:
        """An index of format 1 (names in clear) is refused: its log is format 1 too, and
        ``hdsd store migrate`` rewrites both (Store.open says so before getting here). One of
        format 2 (same log) is upgraded in place."""
        tables = {r[0] for r in self.writer.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "state" in tables:
            (fmt,) = self.writer.execute("SELECT format FROM state").fetchone() or (0,)
            if fmt == 2:
                self._upgrade_2()
                fmt = INDEX_FORMAT
            if fmt != INDEX_FORMAT:
                self.writer.close()
                raise StoreError(f"index {self._path} has format {fmt}, this hdsd reads "
                                 f"{INDEX_FORMAT}: run `hdsd store migrate` (node stopped)")

    def _upgrade_2(self) -> None:
        c = self.writer
        c.execute("BEGIN IMMEDIATE")
        try:
            for statement in _UPGRADE_2:
                c.execute(statement)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            readers = list(self._readers)
            self._readers.clear()  # a holder finalised later finds its connection gone
        for conn in readers:
            conn.close()
        self._forget_heads(None)
        self.writer.close()

    def _reader(self) -> sqlite3.Connection:
        held: _Held | None = getattr(self._local, "conn", None)
        if held is None:
            conn = _connect(self._path)
            conn.execute("PRAGMA query_only=ON")
            conn.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
            held = _Held(conn, self._readers, self._lock)
            self._local.conn = held
            with self._lock:
                self._readers.add(conn)
        return held.conn

    def seal(self, tenant: str) -> TenantSeal:
        """The tenant's seal; :class:`PermissionDenied` if it has no key here."""
        return seal_for(self._sealing, tenant)

    def _open(self, body: bytes, tenant: str, seal: TenantSeal | None = None) -> Version:
        return open_version(body, seal or self.seal(tenant))

    # --- writing (log-writer thread and recovery only) -------------------------------------
    def applied(self) -> AppliedPosition:
        seg, off, last = self.writer.execute(
            "SELECT segment, offset, last_frame FROM state").fetchone()
        return AppliedPosition(seg, off, last)

    def was_closed_cleanly(self) -> bool:
        (clean,) = self.writer.execute("SELECT clean FROM state").fetchone()
        return bool(clean)

    def set_clean(self, clean: bool) -> None:
        """Record a clean close, or (durably, before any write) that the log is open."""
        if not clean:
            # FULL for this one transaction: the mark must not be lost while log writes
            # that follow it survive a power cut.
            self.writer.execute("PRAGMA synchronous=FULL")
        self.writer.execute("UPDATE state SET clean = ?", (int(clean),))
        self.writer.execute("PRAGMA synchronous=NORMAL")

    def apply(self, items: Iterable[tuple[StoredRecord, Location]],
              applied: AppliedPosition, names: Sequence[tuple[SealedVersion, Version]] = (),
              moved: frozenset[int] = frozenset()) -> None:
        """Index *items* and move the applied position, in one transaction. Idempotent.
        *names*: the clear versions of sealed ones among *items*, for the listing caches
        (recovery has none: a cache is built after it). *moved*: positions in *items* of
        copies compaction made (not new writes: a released chunk moved stays released)."""
        c = self.writer
        added = 0
        max_hlc = None
        # For the heads cache: every key a version record of this batch touches, and the new
        # head of a key whose version is newer than every version indexed before the batch
        # (hlc above indexed_max_hlc: nothing older can be its head) when its clear version
        # is known (*names*) and no purge or retention record of the key came with it.
        before = self.indexed_max_hlc
        clear = {id(sealed): v for sealed, v in names} if names else {}
        touched: set[tuple[str, bytes]] = set()
        fresh: dict[tuple[str, bytes], Version] = {}
        controlled: set[tuple[str, bytes]] = set()
        # Rows of plain records (chunks, and versions that are neither purge nor retention
        # records) wait here and go in with one executemany per table: a rebuild or a burst
        # of small puts applies thousands per batch, and one execute per row was most of the
        # writer's time. Any other record flushes them first, so the batch's order holds (a
        # purge record applies after the versions before it, a version after it sees it).
        chunk_rows: list[tuple[str, bytes, int, int, int]] = []
        version_rows: list[tuple[Any, ...]] = []
        head_rows: list[tuple[Any, ...]] = []

        def flush() -> int:
            n = 0
            if chunk_rows:
                n += c.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)",
                                   chunk_rows).rowcount
                chunk_rows.clear()
            if version_rows:
                n += c.executemany(_INSERT_VERSION, version_rows).rowcount
                # A row that was there already (IGNOREd) is offered as head again: a no-op,
                # it is the head or older than it.
                c.executemany(_UPSERT_HEAD_OF_ROW, head_rows)
                version_rows.clear()
                head_rows.clear()
            return n

        c.execute("BEGIN IMMEDIATE")
        try:
            for position, (record, loc) in enumerate(items):
                if isinstance(record, ChunkRecord):
                    chunk_rows.append((record.tenant, record.chunk_id, loc.segment, loc.offset,
                                       loc.length))
                    if self._any_released and position not in moved:
                        # Written again: in use, no longer reclaimable.
                        self._unrelease(c, record.tenant, (record.chunk_id,))
                    continue
                h = record.hlc - _HLC_SHIFT
                ident = (record.tenant, record.name_id)
                touched.add(ident)
                if (record.purges is None and self._any_purges
                        and self._purged(c, record.tenant, record.name_id, h, record.node)):
                    continue  # purged for good: a late copy (repair, a hint) is refused
                if record.purges is None and not record.retains:
                    version_rows.append((record.tenant, record.bucket_id, record.name_id, h,
                                         record.node, record.request_id, loc.segment,
                                         loc.offset, loc.length, record.body,
                                         khash_of(record.name_id)))
                    head_rows.append((int(record.tombstone), record.tenant, record.name_id, h,
                                      record.node))
                    if self._any_released:
                        self._unrelease(c, record.tenant, _chunks_of(record.body))
                    # (an IGNOREd row's hlc is indexed already: counting it changes nothing)
                    max_hlc = h if max_hlc is None else max(max_hlc, h)
                    if record.hlc > before and (v := clear.get(id(record))) is not None:
                        known = fresh.get(ident)
                        if known is None or (known.hlc, known.node) < (v.hlc, v.node):
                            fresh[ident] = v
                    continue
                controlled.add(ident)  # a purge or retention record: its head is read again
                added += flush()
                cur = c.execute(
                    _INSERT_VERSION,
                    (record.tenant, record.bucket_id, record.name_id, h, record.node,
                     record.request_id, loc.segment, loc.offset, loc.length, record.body,
                     khash_of(record.name_id)))
                if cur.rowcount:
                    added += 1
                    if record.purges is not None:
                        added -= self._apply_purge(c, record, int(cur.lastrowid or 0))
                    # (a retention record: kept for the node to read, never a head)
                    max_hlc = h if max_hlc is None else max(max_hlc, h)
            added += flush()
            c.execute(
                "UPDATE state SET segment = ?, offset = ?, last_frame = ?, records = records + ?,"
                " max_hlc = max(max_hlc, ?)",
                (applied.segment, applied.offset, applied.last_frame, added,
                 max_hlc if max_hlc is not None else -_HLC_SHIFT))
            if max_hlc is not None:
                self.indexed_max_hlc = max(self.indexed_max_hlc, max_hlc + _HLC_SHIFT)
            c.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (e.g. SQLITE_FULL): a second ROLLBACK would
            # raise and hide the real error.
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        self._changed()
        if touched:
            self._heads_written(touched, fresh, controlled)
        if names:
            self._note_names(names)

    # --- the heads cache -----------------------------------------------------------------------
    def _heads_written(self, touched: set[tuple[str, bytes]],
                       fresh: dict[tuple[str, bytes], Version],
                       controlled: set[tuple[str, bytes]]) -> None:
        """After a COMMIT that touched the versions of *touched* keys (tenant, name id): their
        cached heads go, and *fresh* ones (known new heads) come in, unless a purge or
        retention record of theirs came in the same batch (*controlled*). Before the writer counts
        the batch indexed, so a read after its acknowledgement (which waits for that) never
        finds the head it replaced; after _changed, so a read that kept a head it read
        before the COMMIT (the generation had not moved yet) loses it here."""
        with self._heads_lock:
            if self._heads:
                for ident in touched:
                    name = self._head_keys.pop(ident, None)
                    if name is not None:
                        self._heads_bytes -= self._heads.pop(name)[2]
            for ident, v in fresh.items():
                if ident not in controlled and type(v.inline) in _INLINE_TYPES:
                    # The caller's version: its metadata may be the request's own dict.
                    self._keep_head(ident, v if not v.metadata else replace(
                        v, metadata=dict(v.metadata)))

    def _keep_head(self, ident: tuple[str, bytes], v: Version) -> None:
        """Cache *v* as the head of its key (tenant, name id *ident*); _heads_lock held."""
        size = _HEAD_OVERHEAD + len(v.inline or b"") + 48 * len(v.chunks)
        if v.metadata:
            size += sum(len(k) + len(x) for k, x in v.metadata.items())
        if size > HEAD_CACHE_BYTES // 64:
            return
        name = (v.tenant, v.bucket, v.key)
        old = self._heads.pop(name, None)
        if old is not None:
            self._heads_bytes -= old[2]
        self._heads[name] = (ident[1], v, size)
        self._head_keys[ident] = name
        self._heads_bytes += size
        while self._heads_bytes > HEAD_CACHE_BYTES:
            (tenant, _, _), (nid, _, dropped) = self._heads.popitem(last=False)
            self._head_keys.pop((tenant, nid), None)
            self._heads_bytes -= dropped

    def _forget_heads(self, tenants: set[str] | None) -> None:
        """Drop the cached heads of *tenants* (None: all), after rows were deleted outside
        apply (shredded tenants, keys this node no longer holds); after _changed, as
        _heads_written."""
        with self._heads_lock:
            if tenants is None:
                self._heads.clear()
                self._head_keys.clear()
                self._heads_bytes = 0
                return
            for name in [n for n in self._heads if n[0] in tenants]:
                nid, _, size = self._heads.pop(name)
                self._head_keys.pop((name[0], nid), None)
                self._heads_bytes -= size

    def _changed(self) -> None:
        """A commit changed (or may have changed) the versions indexed: figures derived from
        them (the tenants' usage, the Merkle trees) are stale. Called after the commit, never
        before: a reader that saw the old generation and then reads the rows may see the new
        ones (one recomputation more), but one that sees the new generation reads them. Under
        the heads cache's lock, before its entries are dropped (see current)."""
        with self._heads_lock:
            self.generation = new_generation()

    # --- purges (writer thread, inside apply's transaction) -----------------------------------
    @staticmethod
    def _purged(c: sqlite3.Connection, tenant: str, nid: bytes, h: int, node: str) -> bool:
        return c.execute("SELECT 1 FROM purges WHERE tenant = ? AND nid = ? AND hlc = ?"
                         " AND node = ? LIMIT 1", (tenant, nid, h, node)).fetchone() is not None

    def _apply_purge(self, c: sqlite3.Connection, record: SealedVersion, vid: int) -> int:
        """A purge record was indexed (row *vid*): remember its target for good, drop the
        target's row if held here (its log record becomes garbage for compaction), move the
        key's head back to the greatest remaining version if the target was the head, and
        note the target's chunks as released (reclaimable once no version names them, see
        :meth:`release_purged`). Returns the rows dropped."""
        assert record.purges is not None
        t_hlc, t_node = record.purges
        th = t_hlc - _HLC_SHIFT
        tenant, nid, bid = record.tenant, record.name_id, record.bucket_id
        c.execute("INSERT OR IGNORE INTO purges VALUES (?, ?, ?, ?, ?)",
                  (tenant, nid, th, t_node, vid))
        self._any_purges = True
        row = c.execute("SELECT vid, body FROM versions WHERE tenant = ? AND nid = ? AND hlc = ?"
                        " AND node = ?", (tenant, nid, th, t_node)).fetchone()
        if row is None or row[0] == vid:
            return 0
        t_vid, t_body = row
        if c.execute("SELECT 1 FROM purges WHERE tenant = ? AND nid = ? AND vid = ?",
                     (tenant, nid, t_vid)).fetchone() is not None:
            return 0  # a purge record is never purged
        c.execute("DELETE FROM versions WHERE vid = ?", (t_vid,))
        self.purges_applied += 1
        now = time.time()
        for chunk_id in _chunks_of(t_body):
            c.execute("INSERT OR IGNORE INTO released VALUES (?, ?, ?)", (tenant, chunk_id, now))
            self._any_released = True
        head = c.execute("SELECT vid FROM heads WHERE tenant = ? AND bid = ? AND nid = ?",
                         (tenant, bid, nid)).fetchone()
        if head is not None and head[0] == t_vid:
            rows = c.execute(
                "SELECT vid, hlc, node, body FROM versions WHERE tenant = ? AND nid = ?"
                " ORDER BY hlc DESC, node DESC", (tenant, nid))
            # The greatest remaining version that is not a purge or retention record.
            best = next((r for r in rows if not _is_control(r[3])), None)
            if best is None:
                c.execute("DELETE FROM heads WHERE tenant = ? AND bid = ? AND nid = ?",
                          (tenant, bid, nid))
            else:
                b_vid, b_hlc, b_node, b_body = best
                c.execute("UPDATE heads SET hlc = ?, node = ?, tombstone = ?, vid = ?"
                          " WHERE tenant = ? AND bid = ? AND nid = ?",
                          (b_hlc, b_node, int(_tombstone_of(b_body)), b_vid, tenant, bid, nid))
        return 1

    @staticmethod
    def _unrelease(c: sqlite3.Connection, tenant: str, chunks: Iterable[bytes]) -> None:
        for chunk_id in chunks:
            c.execute("DELETE FROM released WHERE tenant = ? AND chunk_id = ?",
                      (tenant, chunk_id))

    def is_purged(self, tenant: str, nid: bytes, hlc: int, node: str) -> bool:
        """True if a purge record for this version was indexed here (any thread)."""
        if not self._any_purges or not 0 <= hlc < 1 << 64:
            return False
        return self._purged(self._reader(), tenant, nid, hlc - _HLC_SHIFT, node)

    def is_released(self, tenant: str, chunk_id: bytes) -> bool:
        """True if a purge left this chunk unnamed and it may be reclaimed: a put must write
        it again rather than count on the copy here (any thread)."""
        if not self._any_released:
            return False
        return self._reader().execute(
            "SELECT 1 FROM released WHERE tenant = ? AND chunk_id = ?",
            (tenant, chunk_id)).fetchone() is not None

    def release_purged(self, older_than: float) -> int:
        """Unindex the chunks purges released before *older_than* (a time.time()) that no
        version indexed here names any more; returns how many. Their log records are then
        garbage for compaction. A chunk written again or named by a version indexed since its
        release is in use (apply took it off the list). Compaction's thread; the long scan
        runs outside the write lock, only the versions indexed meanwhile are read under it."""
        if not self._any_released:
            return 0
        conn = self._quarantine_conn()
        wanted: dict[str, set[bytes]] = {}
        for tenant, chunk_id in conn.execute(
                "SELECT tenant, chunk_id FROM released WHERE at <= ?", (older_than,)):
            wanted.setdefault(tenant, set()).add(chunk_id)
        if not wanted:
            return 0
        (last,) = conn.execute("SELECT coalesce(max(vid), 0) FROM versions").fetchone()
        named = self._named(conn, wanted, "vid <= ?", last)
        dropped = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for tenant, chunks in self._named(conn, wanted, "vid > ?", last).items():
                named.setdefault(tenant, set()).update(chunks)
            for tenant, chunks in wanted.items():
                for chunk_id in chunks:
                    gone = conn.execute(
                        "DELETE FROM released WHERE tenant = ? AND chunk_id = ?",
                        (tenant, chunk_id)).rowcount
                    if gone and chunk_id not in named.get(tenant, ()):
                        dropped += conn.execute(
                            "DELETE FROM chunks WHERE tenant = ? AND chunk_id = ?",
                            (tenant, chunk_id)).rowcount
            self._any_released = conn.execute(
                "SELECT 1 FROM released LIMIT 1").fetchone() is not None
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return dropped

    @staticmethod
    def _named(conn: sqlite3.Connection, wanted: dict[str, set[bytes]], where: str,
               vid: int) -> dict[str, set[bytes]]:
        """Of the *wanted* chunks, those some version (rows matching *where*) names."""
        out: dict[str, set[bytes]] = {}
        for tenant, chunks in wanted.items():
            for (body,) in conn.execute(
                    f"SELECT body FROM versions WHERE tenant = ? AND {where}", (tenant, vid)):
                hit = chunks.intersection(_chunks_of(body))
                if hit:
                    out.setdefault(tenant, set()).update(hit)
        return out

    def _note_names(self, names: Sequence[tuple[SealedVersion, Version]]) -> None:
        # After the COMMIT: a listing whose cache build registered before this sees the name
        # here; one that registers after it reads the committed rows. Either way none is lost.
        with self._names_lock:
            if not self._names and not self._building:
                return
            for sealed, v in names:
                ident = (sealed.tenant, sealed.bucket_id)
                cached = self._names.get(ident)
                if cached is not None:
                    cached.pending.add(v.key)
                    if len(cached.pending) > max(PENDING_NAMES_MIN, len(cached.keys) // 4):
                        del self._names[ident]
                building = self._building.get(ident)
                if building is not None:
                    building.add(v.key)

    def relocate(self, items: Iterable[tuple[StoredRecord, Location]]) -> None:
        """Point the index at new copies of records it already holds (compaction moved them).
        Writer thread only; idempotent."""
        c = self.writer
        c.execute("BEGIN IMMEDIATE")
        try:
            for record, loc in items:
                if isinstance(record, ChunkRecord):
                    c.execute("UPDATE chunks SET segment = ?, offset = ?, length = ?"
                              " WHERE tenant = ? AND chunk_id = ?",
                              (loc.segment, loc.offset, loc.length, record.tenant,
                               record.chunk_id))
                else:
                    c.execute("UPDATE versions SET segment = ?, offset = ?, length = ?"
                              " WHERE tenant = ? AND nid = ? AND hlc = ? AND node = ?",
                              (loc.segment, loc.offset, loc.length, record.tenant,
                               record.name_id, record.hlc - _HLC_SHIFT, record.node))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # --- reading (any thread) ----------------------------------------------------------------
    def chunk_location(self, tenant: str, chunk_id: bytes) -> Location | None:
        row = self._reader().execute(
            "SELECT segment, offset, length FROM chunks WHERE tenant = ? AND chunk_id = ?",
            (tenant, chunk_id)).fetchone()
        return None if row is None else Location(*row)

    def has_version(self, tenant: str, name_id: bytes, hlc: int, node: str) -> bool:
        if hlc > self.indexed_max_hlc:
            return False  # newer than every indexed version (a new one): no query
        row = self._reader().execute(
            "SELECT 1 FROM versions WHERE tenant = ? AND nid = ? AND hlc = ? AND node = ?",
            (tenant, name_id, hlc - _HLC_SHIFT, node)).fetchone()
        return row is not None

    def versions(self, tenant: str, bucket: str, key: str) -> list[Version]:
        seal = self.seal(tenant)
        rows = self._reader().execute(
            "SELECT body FROM versions WHERE tenant = ? AND nid = ? ORDER BY hlc, node",
            (tenant, seal.name_id(bucket, key))).fetchall()
        return [open_version(b, seal) for (b,) in rows]

    def current(self, tenant: str, bucket: str, key: str) -> Version | None:
        """The key's head (see Store.current), from the heads cache when it holds it (a
        small get's lookup: no keyed hashes, SQL, AEAD open or Version built)."""
        seal = self.seal(tenant)  # first: a shredded tenant's cached heads are not served
        cached = self._heads.get((tenant, bucket, key))
        if cached is not None:
            return cached[1]
        gen = self.generation  # before the read: a commit after it makes the row suspect
        nid = seal.name_id(bucket, key)
        row = self._reader().execute(
            "SELECT v.body FROM heads h JOIN versions v ON v.vid = h.vid"
            " WHERE h.tenant = ? AND h.bid = ? AND h.nid = ?",
            (tenant, seal.bucket_id(bucket), nid)).fetchone()
        if row is None:
            return None
        version = open_version(row[0], seal)
        with self._heads_lock:
            if self.generation == gen:
                self._keep_head((tenant, nid), version)
        return version

    def get_version(self, tenant: str, bucket: str, key: str, hlc: int,
                    node: str) -> Version | None:
        if not 0 <= hlc < 1 << 64:
            return None
        seal = self.seal(tenant)
        row = self._reader().execute(
            "SELECT body FROM versions WHERE tenant = ? AND nid = ? AND hlc = ? AND node = ?",
            (tenant, seal.name_id(bucket, key), hlc - _HLC_SHIFT, node)).fetchone()
        return None if row is None else open_version(row[0], seal)

    # --- listings: names opened into a sorted cache per bucket --------------------------------
    def _bucket_keys(self, tenant: str, bid: bytes, seal: TenantSeal,
                     stop: Callable[[], bool] | None = None) -> list[str]:
        """Every key name of the bucket with a head here, sorted (a list no one mutates).
        *stop*: a background warm-up's flag, looked at while the names are opened
        (:class:`_WarmStopped` when set; nothing is cached then)."""
        ident = (tenant, bid)
        with self._names_lock:
            cached = self._names.get(ident)
            if cached is not None:
                self._names.move_to_end(ident)
                if cached.pending:
                    known = cached.keys
                    new = sorted(k for k in cached.pending if not _holds(known, k))
                    if new:
                        merged = known + new
                        merged.sort()  # two sorted runs: Timsort merges them in linear time
                        cached.keys = merged
                        self._bound_names()  # grown: the others may have to make room
                    cached.pending = set()
                return cached.keys
            done = self._build_done.get(ident)
            if done is None:  # this thread builds it; listings that come meanwhile wait
                self._building[ident] = set()
                self._build_done[ident] = threading.Event()
        if done is not None:
            # Being built (the warm-up at start, or another listing): one build is enough.
            # If that one fails or stops, this listing builds it (the event is set either way).
            done.wait()
            return self._bucket_keys(tenant, bid, seal, stop)
        try:
            rows = self._reader().execute(
                "SELECT v.body FROM heads h JOIN versions v ON v.vid = h.vid"
                " WHERE h.tenant = ? AND h.bid = ?", (tenant, bid)).fetchall()
            if stop is None:
                opened = {open_names(body, seal)[1] for (body,) in rows}
            else:
                opened = set()
                for n, (body,) in enumerate(rows):
                    if n % _WARM_CHECK == 0:
                        if stop():
                            raise _WarmStopped
                        time.sleep(0)  # let the event loop's thread have the GIL first
                    opened.add(open_names(body, seal)[1])
        except BaseException:
            with self._names_lock:
                self._building.pop(ident, None)
                self._build_done.pop(ident).set()
            raise
        with self._names_lock:
            opened.update(self._building.pop(ident, ()))
            self._build_done.pop(ident).set()
            ordered = sorted(opened)
            self._names[ident] = _BucketNames(ordered)
            self._bound_names()
        return ordered

    def _bound_names(self) -> None:
        """At most CACHED_NAMES names in the listing caches, least recently listed buckets
        dropped first (the last one listed stays, however large). Under ``_names_lock``."""
        total = sum(len(n.keys) for n in self._names.values())
        while total > CACHED_NAMES and len(self._names) > 1:
            _, dropped = self._names.popitem(last=False)
            total -= len(dropped.keys)

    def warm_listings(self, stop: Callable[[], bool], *, max_names: int,
                      min_keys: int) -> tuple[int, int]:
        """Build the listing caches of the largest buckets (at least *min_keys* keys each, at
        most *max_names* names in all), as a first listing would: run at node start in a
        worker thread, so that the first listing of a large bucket after a restart does not
        open every name of it while its client waits. Returns (buckets, names) cached; stops
        early, caching nothing more, once *stop* returns True."""
        sizes = self._reader().execute(
            "SELECT tenant, bid, count(*) FROM heads GROUP BY tenant, bid").fetchall()
        sizes.sort(key=lambda row: -row[2])
        buckets = names = 0
        for tenant, bid, count in sizes:
            if count < min_keys or stop():
                break
            seal = self._sealing.seal_for(tenant)
            if names + count > max_names or seal is None:
                continue  # (a smaller one may fit; no key: a shredded tenant, not listed)
            with self._names_lock:
                if (tenant, bid) in self._names:
                    continue  # a listing was faster
            try:
                names += len(self._bucket_keys(tenant, bid, seal, stop))
            except _WarmStopped:
                break
            buckets += 1
        return buckets, names

    def _heads_of(self, tenant: str, bid: bytes, nids: list[bytes]
                  ) -> dict[bytes, tuple[bool, bytes]]:
        marks = ",".join("?" * len(nids))
        rows = self._reader().execute(
            "SELECT h.nid, h.tombstone, v.body FROM heads h JOIN versions v ON v.vid = h.vid"
            f" WHERE h.tenant = ? AND h.bid = ? AND h.nid IN ({marks})",
            (tenant, bid, *nids)).fetchall()
        return {nid: (bool(tomb), body) for nid, tomb, body in rows}

    def list_current(self, tenant: str, bucket: str, prefix: str, after: str, limit: int,
                     include_deleted: bool) -> list[Version]:
        seal = self.seal(tenant)
        bid = seal.bucket_id(bucket)
        keys = self._bucket_keys(tenant, bid, seal)
        i = max(bisect.bisect_left(keys, prefix), bisect.bisect_right(keys, after))
        out: list[Version] = []
        if limit <= 0:
            return out
        for nids in _name_id_pages(keys, i, prefix, bucket, seal):
            heads = self._heads_of(tenant, bid, nids)
            for nid in nids:
                head = heads.get(nid)
                if head is None or (head[0] and not include_deleted):
                    continue
                out.append(open_version(head[1], seal))
                if len(out) == limit:
                    return out
        return out

    def list_versions(self, tenant: str, bucket: str, prefix: str,
                      after: tuple[str, int, str] | None, limit: int) -> list[Version]:
        seal = self.seal(tenant)
        keys = self._bucket_keys(tenant, seal.bucket_id(bucket), seal)
        i = bisect.bisect_left(keys, prefix)
        cursor: tuple[str, int, str] | None = None
        if after is not None:
            a_key, a_hlc, a_node = after
            a_hlc = min(max(a_hlc, 0), (1 << 64) - 1)  # clamping keeps the order of the cursor
            cursor = (a_key, a_hlc, a_node)
            i = max(i, bisect.bisect_left(keys, a_key))
        out: list[Version] = []
        if limit <= 0:
            return out
        conn = self._reader()
        for nids in _name_id_pages(keys, i, prefix, bucket, seal):
            marks = ",".join("?" * len(nids))
            rows = conn.execute(
                f"SELECT nid, body FROM versions WHERE tenant = ? AND nid IN ({marks})"
                " ORDER BY hlc, node", (tenant, *nids)).fetchall()
            by_nid: dict[bytes, list[bytes]] = {}
            for nid, body in rows:
                by_nid.setdefault(nid, []).append(body)
            for nid in nids:
                for body in by_nid.get(nid, ()):
                    v = open_version(body, seal)
                    if v.control or (
                            cursor is not None and (v.key, v.hlc, v.node) <= cursor):
                        continue  # purge and retention records are for replicas, never listed
                    out.append(v)
                    if len(out) == limit:
                        return out
        return out

    def buckets(self, tenant: str, after: str = "", limit: int | None = None) -> list[str]:
        seal = self.seal(tenant)
        conn = self._reader()
        names: list[str] = []
        # A skip scan (one index probe per bucket id) rather than DISTINCT over every head.
        row = conn.execute("SELECT min(bid) FROM heads WHERE tenant = ?", (tenant,)).fetchone()
        while row is not None and row[0] is not None:
            bid = row[0]
            name = self._bucket_names.get((tenant, bid))
            if name is None:
                (body,) = conn.execute(
                    "SELECT v.body FROM heads h JOIN versions v ON v.vid = h.vid"
                    " WHERE h.tenant = ? AND h.bid = ? LIMIT 1", (tenant, bid)).fetchone()
                name = open_names(body, seal)[0]
                with self._names_lock:
                    self._bucket_names[(tenant, bid)] = name
            names.append(name)
            row = conn.execute("SELECT min(bid) FROM heads WHERE tenant = ? AND bid > ?",
                               (tenant, bid)).fetchone()
        out = sorted(n for n in names if n > after)
        return out if limit is None else out[:limit]

    def tenant_usage(self) -> dict[str, int]:
        """Logical bytes of every tenant's current (not deleted) versions held here."""
        usage: dict[str, int] = {}
        rows = self._reader().execute(
            "SELECT h.tenant, v.body FROM heads h JOIN versions v ON v.vid = h.vid "
            "WHERE h.tombstone = 0")
        for tenant, body in rows:
            usage[tenant] = usage.get(tenant, 0) + _size_of(body)  # size is a clear field
        return usage

    def find_request(self, tenant: str, request_id: bytes) -> Version | None:
        if not request_id:
            return None
        row = self._reader().execute(
            "SELECT body FROM versions WHERE tenant = ? AND request_id = ? AND request_id != x''"
            " ORDER BY vid LIMIT 1", (tenant, request_id)).fetchone()
        return None if row is None else self._open(row[0], tenant)

    def max_hlc(self) -> int:
        (h,) = self._reader().execute("SELECT max_hlc FROM state").fetchone()
        return int(h) + _HLC_SHIFT

    def record_count(self) -> int:
        (n,) = self._reader().execute("SELECT records FROM state").fetchone()
        return int(n)

    def request_ids(self, page: int = 10_000) -> Iterator[tuple[str, bytes]]:
        """(tenant, request id) of every version that has one, shredded tenants' included
        (no key needed: both are stored clear)."""
        last = -1  # paged by rowid: vids only grow, so a version indexed meanwhile is not missed
        while True:
            rows = self._reader().execute(
                "SELECT vid, tenant, request_id FROM versions WHERE vid > ? AND request_id != x''"
                " ORDER BY vid LIMIT ?", (last, page)).fetchall()
            if not rows:
                return
            for _vid, tenant, request_id in rows:
                yield tenant, request_id
            last = rows[-1][0]

    def iter_versions(self, page: int = 1000) -> Iterator[Version]:
        """Every version whose tenant has a key here (a shredded tenant's cannot be opened)."""
        # Paged by rowid so no read transaction stays open while the caller works.
        last = -1
        while True:
            rows = self._reader().execute(
                "SELECT vid, tenant, body FROM versions WHERE vid > ? ORDER BY vid LIMIT ?",
                (last, page)).fetchall()
            if not rows:
                return
            for _vid, tenant, body in rows:
                seal = self._sealing.seal_for(tenant)
                if seal is not None:
                    yield open_version(body, seal)
            last = rows[-1][0]

    # --- anti-entropy and scrub (any thread) ---------------------------------------------------
    def version_names_since(self, after_vid: int, limit: int, *, with_names: bool = False
                            ) -> list[VersionName]:
        """The versions with ``vid > after_vid``, ascending: vids only grow, so a reader
        following them misses nothing. *with_names*: open bucket and key too (None when the
        tenant has no key here)."""
        rows = self._reader().execute(
            "SELECT vid, tenant, nid, hlc, node, khash, body FROM versions WHERE vid > ?"
            " ORDER BY vid LIMIT ?", (after_vid, limit)).fetchall()
        out = []
        for vid, t, nid, h, n, kh, body in rows:
            bucket = key = None
            if with_names:
                seal = self._sealing.seal_for(t)
                if seal is not None:
                    bucket, key = open_names(body, seal)
            out.append(VersionName(vid, t, nid, h + _HLC_SHIFT, n, kh, bucket, key))
        return out

    def versions_by_key_hash(self, low: int, high: int) -> list[tuple[int, bytes, Version]]:
        """``(vid, name id, version)`` of every version whose key hash is in ``[low, high]``
        and whose tenant has a key here."""
        if low > high or high < 0 or low >= 1 << 32:
            return []
        # The key hash is the top 32 bits of the name id, so the range is a range of name ids
        # of each tenant (versions_by_name), from the 4-byte prefix of *low* up to, not
        # including, that of high + 1: a 16-byte id sorts after its own 4-byte prefix.
        first = max(low, 0).to_bytes(4, "big")
        after = None if high >= (1 << 32) - 1 else (high + 1).to_bytes(4, "big")
        conn = self._reader()
        rows = []
        # A skip scan over the tenants (one index probe each) rather than DISTINCT.
        row = conn.execute("SELECT min(tenant) FROM versions").fetchone()
        while row is not None and row[0] is not None:
            tenant = row[0]
            if after is None:
                found = conn.execute(
                    "SELECT vid, nid, body FROM versions WHERE tenant = ? AND nid >= ?",
                    (tenant, first))
            else:
                found = conn.execute(
                    "SELECT vid, nid, body FROM versions WHERE tenant = ? AND nid >= ?"
                    " AND nid < ?", (tenant, first, after))
            rows += [(vid, tenant, nid, body) for vid, nid, body in found]
            row = conn.execute("SELECT min(tenant) FROM versions WHERE tenant > ?",
                               (tenant,)).fetchone()
        out = []
        for vid, tenant, nid, body in rows:
            seal = self._sealing.seal_for(tenant)
            if seal is not None:
                out.append((vid, nid, open_version(body, seal)))
        return out

    def chunk_locations(self, after: tuple[str, bytes] | None, limit: int
                        ) -> list[tuple[str, bytes, Location]]:
        """Chunks in ``(tenant, chunk_id)`` order after the cursor *after*."""
        t, c = after if after is not None else ("", b"")
        rows = self._reader().execute(
            "SELECT tenant, chunk_id, segment, offset, length FROM chunks"
            " WHERE (tenant, chunk_id) > (?, ?) ORDER BY tenant, chunk_id LIMIT ?",
            (t, c, limit)).fetchall()
        return [(t, c, Location(s, o, n)) for t, c, s, o, n in rows]

    def version_locations(self, after_vid: int, limit: int
                          ) -> list[tuple[int, Version | IntegrityError, Location]]:
        """Versions after *after_vid* with their log locations (those of tenants with a key
        here: a shredded tenant's records are garbage for compaction, not scrub). A record
        that does not open comes as its error, in its place: one damaged record is what a
        scrub counts, not what ends it."""
        rows = self._reader().execute(
            "SELECT vid, tenant, body, segment, offset, length FROM versions WHERE vid > ?"
            " ORDER BY vid LIMIT ?", (after_vid, limit)).fetchall()
        out: list[tuple[int, Version | IntegrityError, Location]] = []
        for vid, tenant, body, s, o, n in rows:
            seal = self._sealing.seal_for(tenant)
            if seal is not None:
                try:
                    version: Version | IntegrityError = open_version(body, seal)
                except IntegrityError as exc:
                    version = exc
                out.append((vid, version, Location(s, o, n)))
        return out

    def quarantine_chunk(self, tenant: str, chunk_id: bytes, loc: Location,
                         reason: str) -> bool:
        """Forget a damaged chunk record (reads then fetch it from another replica, and a
        fresh copy can be committed); the damaged location is remembered. True if it was
        still indexed at *loc*."""
        conn = self._quarantine_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "DELETE FROM chunks WHERE tenant = ? AND chunk_id = ? AND segment = ?"
                " AND offset = ?", (tenant, chunk_id, loc.segment, loc.offset))
            if cur.rowcount:
                conn.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (tenant, chunk_id, loc.segment, loc.offset, loc.length, reason,
                              time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return bool(cur.rowcount)

    def instance(self) -> str:
        (value,) = self._reader().execute(
            "SELECT value FROM meta WHERE key = 'instance'").fetchone()
        return str(value)

    def quarantined(self) -> int:
        (n,) = self._reader().execute("SELECT count(*) FROM quarantine").fetchone()
        return int(n)

    def _quarantine_conn(self) -> sqlite3.Connection:
        # Its own connection: the writer's belongs to the log-writer thread. SQLite's lock
        # (busy_timeout) orders the two.
        held: _Held | None = getattr(self._local, "qconn", None)
        if held is None:
            conn = _connect(self._path)
            held = _Held(conn, self._readers, self._lock)
            self._local.qconn = held
            with self._lock:
                self._readers.add(conn)
        return held.conn

    # --- compaction (any thread but the writer's) ---------------------------------------------
    def location_of(self, record: StoredRecord) -> Location | None:
        if isinstance(record, ChunkRecord):
            return self.chunk_location(record.tenant, record.chunk_id)
        row = self._reader().execute(
            "SELECT segment, offset, length FROM versions WHERE tenant = ? AND nid = ?"
            " AND hlc = ? AND node = ?",
            (record.tenant, record.name_id, record.hlc - _HLC_SHIFT, record.node)).fetchone()
        return None if row is None else Location(*row)

    def forget_tenants(self, tenants: Iterable[str]) -> int:
        """Drop every row of *tenants* (shredded: their records are garbage); returns the rows
        dropped."""
        conn = self._quarantine_conn()
        dropped = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for t in tenants:
                for table in ("chunks", "versions", "heads", "purges", "released"):
                    dropped += conn.execute(f"DELETE FROM {table} WHERE tenant = ?",
                                            (t,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._changed()
        gone = set(tenants)
        self._forget_heads(gone)
        with self._names_lock:
            for cache in (self._names, self._bucket_names):
                for ident in [i for i in cache if i[0] in gone]:
                    del cache[ident]
        return dropped

    def forget_keys(self, keys: Iterable[tuple[str, str, str]],
                    keep_chunk: Callable[[str, bytes], bool]) -> tuple[int, int]:
        """Drop every version of *keys* (this node no longer holds them: their new replicas
        do), and the chunks they named that *keep_chunk* does not claim; returns (versions,
        chunks) dropped. Their records become garbage for compaction."""
        conn = self._quarantine_conn()
        versions = chunks = 0
        touched: set[tuple[str, bytes]] = set()  # (tenant, bucket id) of listing caches
        tenants: set[str] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for tenant, bucket, key in keys:
                tenants.add(tenant)
                seal = self.seal(tenant)
                nid, bid = seal.name_id(bucket, key), seal.bucket_id(bucket)
                rows = conn.execute("SELECT body FROM versions WHERE tenant = ? AND nid = ?",
                                    (tenant, nid)).fetchall()
                named = {c for (body,) in rows for c in open_version(body, seal).chunks}
                if conn.execute("DELETE FROM heads WHERE tenant = ? AND bid = ? AND nid = ?",
                                (tenant, bid, nid)).rowcount:
                    touched.add((tenant, bid))
                versions += conn.execute("DELETE FROM versions WHERE tenant = ? AND nid = ?",
                                         (tenant, nid)).rowcount
                conn.execute("DELETE FROM purges WHERE tenant = ? AND nid = ?", (tenant, nid))
                for chunk_id in named:
                    if not keep_chunk(tenant, chunk_id):
                        chunks += conn.execute(
                            "DELETE FROM chunks WHERE tenant = ? AND chunk_id = ?",
                            (tenant, chunk_id)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._changed()
        self._forget_heads(tenants)
        with self._names_lock:  # listings of those buckets open their names again
            for ident in touched:
                self._names.pop(ident, None)
        return versions, chunks

    def references(self, segment: int) -> int:
        """Index rows still pointing into *segment*."""
        conn = self._reader()
        (a,) = conn.execute("SELECT count(*) FROM chunks WHERE segment = ?", (segment,)
                            ).fetchone()
        (b,) = conn.execute("SELECT count(*) FROM versions WHERE segment = ?", (segment,)
                            ).fetchone()
        return int(a) + int(b)

    def make_durable(self) -> None:
        """Checkpoint the WAL into the database file, synced: index changes made so far survive
        a power cut (normally they need not — the log is replayed — but compaction deletes the
        log the old rows pointed into)."""
        conn = self._quarantine_conn()
        # TRUNCATE: also empties the WAL file, whose old frames would keep deleted rows.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
