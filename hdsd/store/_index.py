"""The SQLite index: a rebuildable cache of the log, mapping names to log positions.

WAL mode with ``synchronous=NORMAL``: an index transaction may be lost at a power cut, which is
harmless because the log is the truth and the applied position (kept in the same transaction as
the rows it covers) says where replay must resume. One connection per thread: the log writer
owns the writing connection; every reading thread gets its own, so reads never wait for a
commit.

HLCs are unsigned 64-bit but SQLite integers are signed: they are stored shifted by -2**63,
which keeps their order. Text compares as bytes (BINARY collation on UTF-8), the same order as
Python's ``str`` comparison, so SQL ``ORDER BY`` and Python agree.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import blake3

from .._packing import packb, unpackb
from ._records import ChunkRecord
from ._version import Version

__all__ = ["AppliedPosition", "Index", "Location", "key_hash"]

_HLC_SHIFT = 1 << 63
INDEX_FORMAT = 1

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
    tenant TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
    hlc INTEGER NOT NULL, node TEXT NOT NULL,
    request_id BLOB NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    body BLOB NOT NULL,           -- Version.to_wire(), so reads never touch the log
    khash INTEGER NOT NULL DEFAULT 0  -- key_hash(tenant, bucket, key): anti-entropy buckets
);
CREATE UNIQUE INDEX IF NOT EXISTS versions_by_name ON versions (tenant, bucket, key, hlc, node);
CREATE INDEX IF NOT EXISTS versions_by_request ON versions (tenant, request_id)
    WHERE request_id != x'';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    tenant TEXT NOT NULL, chunk_id BLOB NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS heads (
    tenant TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
    hlc INTEGER NOT NULL, node TEXT NOT NULL, tombstone INTEGER NOT NULL, vid INTEGER NOT NULL,
    PRIMARY KEY (tenant, bucket, key)
) WITHOUT ROWID;
"""

_UPSERT_HEAD = """
INSERT INTO heads (tenant, bucket, key, hlc, node, tombstone, vid) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant, bucket, key) DO UPDATE SET
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
    return conn


def key_hash(tenant: str, bucket: str, key: str) -> int:
    """A 32-bit hash of a key's full name: anti-entropy groups versions into Merkle leaves by
    its top bits, so the versions of one key always fall in the same leaf."""
    name = b"\x00".join((tenant.encode(), bucket.encode(), key.encode()))
    return int.from_bytes(blake3.blake3(name).digest(4), "big")


def _version(body: bytes) -> Version:
    return Version.from_wire(unpackb(body))


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


class Index:
    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self.writer = _connect(path)
        self.writer.executescript(_SCHEMA)
        self._migrate()
        self.writer.execute(
            "INSERT OR IGNORE INTO state VALUES (1, ?, 0, 0, -1, ?, 0, 0)",
            (INDEX_FORMAT, -_HLC_SHIFT))

    def _migrate(self) -> None:
        """Bring an index written by an older hdsd up to date (the log is untouched)."""
        c = self.writer
        columns = {row[1] for row in c.execute("PRAGMA table_info(versions)")}
        if "khash" not in columns:  # format 1 before anti-entropy: hash the existing keys
            c.create_function("hdsd_key_hash", 3, key_hash, deterministic=True)
            c.execute("BEGIN IMMEDIATE")
            c.execute("ALTER TABLE versions ADD COLUMN khash INTEGER NOT NULL DEFAULT 0")
            c.execute("UPDATE versions SET khash = hdsd_key_hash(tenant, bucket, key)")
            c.execute("COMMIT")
        c.execute("CREATE INDEX IF NOT EXISTS versions_by_khash ON versions (khash)")
        # Names this index file: derived state (Merkle snapshots) must not outlive a rebuild.
        c.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (os.urandom(8).hex(),))

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self.writer.close()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self._path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

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

    def apply(self, items: Iterable[tuple[ChunkRecord | Version, Location]],
              applied: AppliedPosition) -> None:
        """Index *items* and move the applied position, in one transaction. Idempotent."""
        c = self.writer
        added = 0
        max_hlc = None
        c.execute("BEGIN IMMEDIATE")
        try:
            for record, loc in items:
                if isinstance(record, ChunkRecord):
                    cur = c.execute(
                        "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)",
                        (record.tenant, record.chunk_id, loc.segment, loc.offset, loc.length))
                    added += cur.rowcount
                    continue
                h = record.hlc - _HLC_SHIFT
                cur = c.execute(
                    "INSERT OR IGNORE INTO versions (tenant, bucket, key, hlc, node, request_id,"
                    " segment, offset, length, body, khash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.tenant, record.bucket, record.key, h, record.node,
                     record.request_id, loc.segment, loc.offset, loc.length,
                     packb(record.to_wire()), key_hash(record.tenant, record.bucket,
                                                       record.key)))
                if cur.rowcount:
                    added += 1
                    c.execute(_UPSERT_HEAD, (record.tenant, record.bucket, record.key, h,
                                             record.node, int(record.tombstone), cur.lastrowid))
                    max_hlc = h if max_hlc is None else max(max_hlc, h)
            c.execute(
                "UPDATE state SET segment = ?, offset = ?, last_frame = ?, records = records + ?,"
                " max_hlc = max(max_hlc, ?)",
                (applied.segment, applied.offset, applied.last_frame, added,
                 max_hlc if max_hlc is not None else -_HLC_SHIFT))
            c.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (e.g. SQLITE_FULL): a second ROLLBACK would
            # raise and hide the real error.
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def relocate(self, items: Iterable[tuple[ChunkRecord | Version, Location]]) -> None:
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
                              " WHERE tenant = ? AND bucket = ? AND key = ? AND hlc = ?"
                              " AND node = ?",
                              (loc.segment, loc.offset, loc.length, record.tenant,
                               record.bucket, record.key, record.hlc - _HLC_SHIFT, record.node))
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

    def has_version(self, v: Version) -> bool:
        row = self._reader().execute(
            "SELECT 1 FROM versions WHERE tenant = ? AND bucket = ? AND key = ? AND hlc = ?"
            " AND node = ?", (v.tenant, v.bucket, v.key, v.hlc - _HLC_SHIFT, v.node)).fetchone()
        return row is not None

    def versions(self, tenant: str, bucket: str, key: str) -> list[Version]:
        rows = self._reader().execute(
            "SELECT body FROM versions WHERE tenant = ? AND bucket = ? AND key = ?"
            " ORDER BY hlc, node", (tenant, bucket, key)).fetchall()
        return [_version(b) for (b,) in rows]

    def current(self, tenant: str, bucket: str, key: str) -> Version | None:
        row = self._reader().execute(
            "SELECT v.body FROM heads h JOIN versions v ON v.vid = h.vid"
            " WHERE h.tenant = ? AND h.bucket = ? AND h.key = ?",
            (tenant, bucket, key)).fetchone()
        return None if row is None else _version(row[0])

    def get_version(self, tenant: str, bucket: str, key: str, hlc: int,
                    node: str) -> Version | None:
        if not 0 <= hlc < 1 << 64:
            return None
        row = self._reader().execute(
            "SELECT body FROM versions WHERE tenant = ? AND bucket = ? AND key = ? AND hlc = ?"
            " AND node = ?", (tenant, bucket, key, hlc - _HLC_SHIFT, node)).fetchone()
        return None if row is None else _version(row[0])

    def list_current(self, tenant: str, bucket: str, prefix: str, after: str, limit: int,
                     include_deleted: bool) -> list[Version]:
        sql = ["SELECT v.body FROM heads h JOIN versions v ON v.vid = h.vid"
               " WHERE h.tenant = ? AND h.bucket = ? AND h.key >= ? AND h.key > ?"]
        args: list[object] = [tenant, bucket, prefix, after]
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            sql.append(" AND h.key < ?")
            args.append(upper)
        if not include_deleted:
            sql.append(" AND h.tombstone = 0")
        sql.append(" ORDER BY h.key LIMIT ?")
        args.append(limit)
        rows = self._reader().execute("".join(sql), args).fetchall()
        return [_version(b) for (b,) in rows]

    def list_versions(self, tenant: str, bucket: str, prefix: str,
                      after: tuple[str, int, str] | None, limit: int) -> list[Version]:
        sql = ["SELECT body FROM versions WHERE tenant = ? AND bucket = ? AND key >= ?"]
        args: list[object] = [tenant, bucket, prefix]
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            sql.append(" AND key < ?")
            args.append(upper)
        if after is not None:
            a_key, a_hlc, a_node = after
            a_hlc = min(max(a_hlc, 0), (1 << 64) - 1)  # clamping keeps the order of the cursor
            sql.append(" AND (key, hlc, node) > (?, ?, ?)")
            args.extend((a_key, a_hlc - _HLC_SHIFT, a_node))
        sql.append(" ORDER BY key, hlc, node LIMIT ?")
        args.append(limit)
        rows = self._reader().execute("".join(sql), args).fetchall()
        return [_version(b) for (b,) in rows]

    def buckets(self, tenant: str, after: str = "", limit: int | None = None) -> list[str]:
        # A skip scan (one index probe per bucket) rather than DISTINCT over every version.
        out: list[str] = []
        conn = self._reader()
        row = conn.execute("SELECT min(bucket) FROM heads WHERE tenant = ? AND bucket > ?",
                           (tenant, after)).fetchone()
        while row is not None and row[0] is not None and (limit is None or len(out) < limit):
            out.append(row[0])
            row = conn.execute("SELECT min(bucket) FROM heads WHERE tenant = ? AND bucket > ?",
                               (tenant, row[0])).fetchone()
        return out

    def tenant_usage(self) -> dict[str, int]:
        """Logical bytes of every tenant's current (not deleted) versions held here."""
        usage: dict[str, int] = {}
        rows = self._reader().execute(
            "SELECT h.tenant, v.body FROM heads h JOIN versions v ON v.vid = h.vid "
            "WHERE h.tombstone = 0")
        for tenant, body in rows:
            usage[tenant] = usage.get(tenant, 0) + _version(body).size
        return usage

    def find_request(self, tenant: str, request_id: bytes) -> Version | None:
        if not request_id:
            return None
        row = self._reader().execute(
            "SELECT body FROM versions WHERE tenant = ? AND request_id = ? AND request_id != x''"
            " ORDER BY vid LIMIT 1", (tenant, request_id)).fetchone()
        return None if row is None else _version(row[0])

    def max_hlc(self) -> int:
        (h,) = self._reader().execute("SELECT max_hlc FROM state").fetchone()
        return int(h) + _HLC_SHIFT

    def record_count(self) -> int:
        (n,) = self._reader().execute("SELECT records FROM state").fetchone()
        return int(n)

    def iter_versions(self, page: int = 1000) -> Iterator[Version]:
        # Paged by rowid so no read transaction stays open while the caller works.
        last = -1
        while True:
            rows = self._reader().execute(
                "SELECT vid, body FROM versions WHERE vid > ? ORDER BY vid LIMIT ?",
                (last, page)).fetchall()
            if not rows:
                return
            for _vid, body in rows:
                yield _version(body)
            last = rows[-1][0]

    # --- anti-entropy and scrub (any thread) ---------------------------------------------------
    def version_names_since(self, after_vid: int, limit: int
                            ) -> list[tuple[int, str, str, str, int, str, int]]:
        """``(vid, tenant, bucket, key, hlc, node, khash)`` of versions with ``vid >
        after_vid``, ascending: vids only grow, so a reader following them misses nothing."""
        rows = self._reader().execute(
            "SELECT vid, tenant, bucket, key, hlc, node, khash FROM versions WHERE vid > ?"
            " ORDER BY vid LIMIT ?", (after_vid, limit)).fetchall()
        return [(vid, t, b, k, h + _HLC_SHIFT, n, kh) for vid, t, b, k, h, n, kh in rows]

    def versions_by_key_hash(self, low: int, high: int) -> list[tuple[int, Version]]:
        """``(vid, version)`` of every version whose key hash is in ``[low, high]``."""
        rows = self._reader().execute(
            "SELECT vid, body FROM versions WHERE khash BETWEEN ? AND ?", (low, high)).fetchall()
        return [(vid, _version(body)) for vid, body in rows]

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
                          ) -> list[tuple[int, Version, Location]]:
        rows = self._reader().execute(
            "SELECT vid, body, segment, offset, length FROM versions WHERE vid > ?"
            " ORDER BY vid LIMIT ?", (after_vid, limit)).fetchall()
        return [(vid, _version(body), Location(s, o, n)) for vid, body, s, o, n in rows]

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
        conn: sqlite3.Connection | None = getattr(self._local, "qconn", None)
        if conn is None:
            conn = _connect(self._path)
            self._local.qconn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    # --- compaction (any thread but the writer's) ---------------------------------------------
    def location_of(self, record: ChunkRecord | Version) -> Location | None:
        if isinstance(record, ChunkRecord):
            return self.chunk_location(record.tenant, record.chunk_id)
        row = self._reader().execute(
            "SELECT segment, offset, length FROM versions WHERE tenant = ? AND bucket = ?"
            " AND key = ? AND hlc = ? AND node = ?",
            (record.tenant, record.bucket, record.key, record.hlc - _HLC_SHIFT,
             record.node)).fetchone()
        return None if row is None else Location(*row)

    def forget_tenants(self, tenants: Iterable[str]) -> int:
        """Drop every row of *tenants* (shredded: their records are garbage); returns the rows
        dropped."""
        conn = self._quarantine_conn()
        dropped = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for t in tenants:
                for table in ("chunks", "versions", "heads"):
                    dropped += conn.execute(f"DELETE FROM {table} WHERE tenant = ?",
                                            (t,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return dropped

    def forget_keys(self, keys: Iterable[tuple[str, str, str]],
                    keep_chunk: Callable[[str, bytes], bool]) -> tuple[int, int]:
        """Drop every version of *keys* (this node no longer holds them: their new replicas
        do), and the chunks they named that *keep_chunk* does not claim; returns (versions,
        chunks) dropped. Their records become garbage for compaction."""
        conn = self._quarantine_conn()
        versions = chunks = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for tenant, bucket, key in keys:
                rows = conn.execute(
                    "SELECT body FROM versions WHERE tenant = ? AND bucket = ? AND key = ?",
                    (tenant, bucket, key)).fetchall()
                named = {c for (body,) in rows for c in _version(body).chunks}
                versions += conn.execute(
                    "DELETE FROM versions WHERE tenant = ? AND bucket = ? AND key = ?",
                    (tenant, bucket, key)).rowcount
                conn.execute("DELETE FROM heads WHERE tenant = ? AND bucket = ? AND key = ?",
                             (tenant, bucket, key))
                for chunk_id in named:
                    if not keep_chunk(tenant, chunk_id):
                        chunks += conn.execute(
                            "DELETE FROM chunks WHERE tenant = ? AND chunk_id = ?",
                            (tenant, chunk_id)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
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
        conn.execute("PRAGMA wal_checkpoint(FULL)")
