"""The catalog's durable form: one SQLite file per node (``catalog.sqlite`` in the data dir).

``secure_delete=ON`` makes SQLite overwrite freed cells and pages with zeros, so a shredded
tenant's wrapped keys do not survive in free space. The rollback journal (``journal_mode=DELETE``,
not WAL) holds a changed page only for the length of one transaction and is then deleted, where a
WAL file would keep the pre-shred page until a checkpoint. ``synchronous=FULL``: an admin
change is durable once :meth:`Catalog.apply` returns.

Every write goes through :meth:`Catalog.apply`, which merges by the rules of :mod:`._model`;
the catalog is therefore the same whatever order updates arrive in.

Bucket and hold entries are keyed by ids and hold their names sealed (:mod:`._names`), in the
tables ``sealed_buckets`` and ``sealed_holds``. A catalog written before (tables ``buckets``
and ``holds``, names in clear) is converted by :meth:`Catalog.seal_clear_names`, which the node
runs at start with its tenant keys (and ``hdsd store migrate`` offline).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import blake3

from .._packing import packb
from ..pipeline import NameSeal, TenantKeys
from ._keys import unwrap_keys
from ._model import BucketEntry, Entry, HoldEntry, RevokedEntry, S3KeyEntry, TenantEntry, merge
from ._names import seal_bucket, seal_hold

__all__ = ["Catalog", "SealedNames", "tenant_in_catalog", "tenant_state_in_catalog"]

_CLEAR_TABLES = ("buckets", "holds")  # before names were sealed


@dataclass(frozen=True, slots=True)
class SealedNames:
    """What :meth:`Catalog.seal_clear_names` did."""

    buckets: int  # bucket entries sealed
    holds: int  # hold entries sealed
    dropped: int  # entries of tenants without a key (shredded): not carried over

CATALOG_FILE = "catalog.sqlite"
_SHIFT = 1 << 63  # HLCs are unsigned 64-bit, SQLite integers signed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY, wrapped BLOB, created INTEGER NOT NULL,
    quota_bytes INTEGER NOT NULL, quota_hlc INTEGER NOT NULL, key_generation INTEGER NOT NULL,
    shredded INTEGER NOT NULL, plan TEXT NOT NULL DEFAULT 'standard'
);
CREATE TABLE IF NOT EXISTS sealed_buckets (
    tenant TEXT NOT NULL, id BLOB NOT NULL, sealed BLOB NOT NULL,
    retention_days INTEGER NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS sealed_holds (
    tenant TEXT NOT NULL, id BLOB NOT NULL, bucket_id BLOB NOT NULL, sealed BLOB NOT NULL,
    held INTEGER NOT NULL, by TEXT NOT NULL, hlc INTEGER NOT NULL, PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS revoked (
    serial TEXT PRIMARY KEY, hlc INTEGER NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL,
    kind TEXT NOT NULL, tenant TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    not_after INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS s3keys (
    access_key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL, wrapped BLOB,
    created INTEGER NOT NULL, by TEXT NOT NULL, revoked INTEGER NOT NULL,
    revoked_by TEXT NOT NULL
);
"""


def _s(hlc: int) -> int:
    return hlc - _SHIFT


def _u(value: int) -> int:
    return value + _SHIFT


class Catalog:
    """Tenants, buckets, holds, revoked certificates and S3 access keys of the cluster as this
    node knows them;
    thread-safe.

    Reads are served from memory (the catalog is small: one entry per tenant, bucket and held
    key); SQLite is the durable copy, written in the caller's thread.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(tenants)")}
        if "plan" not in columns:  # a catalog written before tenants had plans
            self._db.execute("ALTER TABLE tenants ADD COLUMN plan TEXT NOT NULL "
                             "DEFAULT 'standard'")
        self._migrate_creations(columns)
        self._entries: dict[tuple[str, ...], Entry] = {}
        self._load()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate_creations(self, columns: set[str]) -> None:
        """Tenants created before creations were confirmed are confirmed: every node already
        serves them, so the column defaults say so (one ALTER each, in place)."""
        for column, decl in (("epoch", "INTEGER NOT NULL DEFAULT 0"),
                             ("creation", "BLOB NOT NULL DEFAULT x''"),
                             ("state", "TEXT NOT NULL DEFAULT 'confirmed'"),
                             ("origin", "TEXT NOT NULL DEFAULT ''")):
            if column not in columns:
                self._db.execute(f"ALTER TABLE tenants ADD COLUMN {column} {decl}")

    def _load(self) -> None:
        for row in self._db.execute("SELECT name, wrapped, created, quota_bytes, quota_hlc, "
                                    "key_generation, shredded, plan, epoch, creation, state, "
                                    "origin FROM tenants"):
            t = TenantEntry(name=row[0], wrapped=row[1] or b"", created=_u(row[2]),
                            quota_bytes=row[3], quota_hlc=_u(row[4]), key_generation=row[5],
                            shredded=_u(row[6]), plan=row[7], epoch=row[8],
                            creation=bytes(row[9]), state=row[10], origin=row[11])
            self._entries[t.ident] = t
        for row in self._db.execute("SELECT tenant, id, sealed, retention_days, created "
                                    "FROM sealed_buckets"):
            b = BucketEntry(tenant=row[0], bucket_id=bytes(row[1]), sealed=bytes(row[2]),
                            retention_days=row[3], created=_u(row[4]))
            self._entries[b.ident] = b
        for row in self._db.execute("SELECT tenant, id, bucket_id, sealed, held, by, hlc "
                                    "FROM sealed_holds"):
            h = HoldEntry(tenant=row[0], name_id=bytes(row[1]), bucket_id=bytes(row[2]),
                          sealed=bytes(row[3]), held=bool(row[4]), by=row[5], hlc=_u(row[6]))
            self._entries[h.ident] = h
        for row in self._db.execute("SELECT serial, hlc, by, reason, kind, tenant, name, role, "
                                    "not_after FROM revoked"):
            r = RevokedEntry(serial=row[0], hlc=_u(row[1]), by=row[2], reason=row[3],
                             kind=row[4], tenant=row[5], name=row[6], role=row[7],
                             not_after=_u(row[8]))
            self._entries[r.ident] = r
        for row in self._db.execute("SELECT access_key_id, tenant, role, wrapped, created, by, "
                                    "revoked, revoked_by FROM s3keys"):
            k = S3KeyEntry(access_key_id=row[0], tenant=row[1], role=row[2],
                           wrapped=row[3] or b"", created=_u(row[4]), by=row[5],
                           revoked=_u(row[6]), revoked_by=row[7])
            self._entries[k.ident] = k

    # -- writes ------------------------------------------------------------------------------
    def apply(self, entries: Iterable[Entry]) -> list[Entry]:
        """Merge *entries* in, durably; return the entries that changed (as merged)."""
        with self._lock:
            changed: dict[tuple[str, ...], Entry] = {}
            for entry in entries:
                old = changed.get(entry.ident) or self._entries.get(entry.ident)
                new = entry if old is None else merge(old, entry)
                if new != old:
                    changed[new.ident] = new
            return self._commit(changed)

    def _shredded(self, tenant: str, changed: dict[tuple[str, ...], Entry]) -> bool:
        e = changed.get(("tenant", tenant)) or self._entries.get(("tenant", tenant))
        return isinstance(e, TenantEntry) and e.is_shredded

    def _commit(self, changed: dict[tuple[str, ...], Entry]) -> list[Entry]:
        # A shredded tenant keeps no bucket or hold entry: their ids and sealed names were made
        # with the destroyed key (a former copy of it could test guessed names against the
        # ids). Dropped when the shred arrives, and refused from peers that have not heard of
        # it yet; shredding is terminal, so every node ends with the same catalog.
        changed = {i: e for i, e in changed.items()
                   if not (isinstance(e, BucketEntry | HoldEntry)
                           and self._shredded(e.tenant, changed))}
        purged = {e.name for e in changed.values()
                  if isinstance(e, TenantEntry) and e.is_shredded
                  and any(isinstance(x, BucketEntry | HoldEntry) and x.tenant == e.name
                          for x in self._entries.values())}
        if not changed:
            return []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for entry in changed.values():
                self._write(entry)
            for tenant in purged:  # secure_delete zeroes the cells
                self._db.execute("DELETE FROM sealed_buckets WHERE tenant = ?", (tenant,))
                self._db.execute("DELETE FROM sealed_holds WHERE tenant = ?", (tenant,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._entries.update(changed)
        if purged:
            self._entries = {i: e for i, e in self._entries.items()
                             if not (isinstance(e, BucketEntry | HoldEntry)
                                     and e.tenant in purged)}
        return list(changed.values())

    def update_tenant(self, name: str, decide: Callable[[TenantEntry | None], TenantEntry]
                      ) -> tuple[list[Entry], TenantEntry]:
        """Merge in ``decide(current entry of name)``, atomically with that decision: a vote
        or a confirmation checks what this node holds and changes it in one step (*decide*
        raises to refuse, and nothing changes). Returns (changed entries, the entry now)."""
        with self._lock:
            old = self.tenant(name)
            new = decide(old)
            merged = new if old is None else merge(old, new)
            assert isinstance(merged, TenantEntry)
            changed = self._commit({merged.ident: merged} if merged != old else {})
            return changed, merged

    def _write(self, e: Entry) -> None:
        if isinstance(e, TenantEntry):
            # An UPDATE in place, never delete-and-insert: with secure_delete the old cell
            # (and its key bytes) is zeroed when it is rewritten.
            self._db.execute(
                "INSERT INTO tenants (name, wrapped, created, quota_bytes, quota_hlc, "
                "key_generation, shredded, plan, epoch, creation, state, origin) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE "
                "SET wrapped = excluded.wrapped, created = excluded.created, "
                "quota_bytes = excluded.quota_bytes, quota_hlc = excluded.quota_hlc, "
                "key_generation = excluded.key_generation, shredded = excluded.shredded, "
                "plan = excluded.plan, epoch = excluded.epoch, creation = excluded.creation, "
                "state = excluded.state, origin = excluded.origin",
                (e.name, e.wrapped or None, _s(e.created), e.quota_bytes, _s(e.quota_hlc),
                 e.key_generation, _s(e.shredded), e.plan, e.epoch, e.creation, e.state,
                 e.origin))
        elif isinstance(e, BucketEntry):
            self._db.execute(
                "INSERT OR REPLACE INTO sealed_buckets VALUES (?, ?, ?, ?, ?)",
                (e.tenant, e.bucket_id, e.sealed, e.retention_days, _s(e.created)))
        elif isinstance(e, HoldEntry):
            self._db.execute(
                "INSERT OR REPLACE INTO sealed_holds VALUES (?, ?, ?, ?, ?, ?, ?)",
                (e.tenant, e.name_id, e.bucket_id, e.sealed, int(e.held), e.by, _s(e.hlc)))
        elif isinstance(e, S3KeyEntry):
            # In place, like tenants: with secure_delete a revoked key's wrapped secret is
            # zeroed on disk when its cell is rewritten.
            self._db.execute(
                "INSERT INTO s3keys (access_key_id, tenant, role, wrapped, created, by, "
                "revoked, revoked_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (access_key_id) DO UPDATE "
                "SET tenant = excluded.tenant, role = excluded.role, "
                "wrapped = excluded.wrapped, created = excluded.created, by = excluded.by, "
                "revoked = excluded.revoked, revoked_by = excluded.revoked_by",
                (e.access_key_id, e.tenant, e.role, e.wrapped or None, _s(e.created), e.by,
                 _s(e.revoked), e.revoked_by))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO revoked VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.serial, _s(e.hlc), e.by, e.reason, e.kind, e.tenant, e.name, e.role,
                 _s(e.not_after)))

    # -- names in clear, from before they were sealed -----------------------------------------
    def clear_names(self) -> int:
        """How many bucket and hold rows of an older catalog still hold names in clear."""
        with self._lock:
            return sum(self._db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for t in self._clear_tables())

    def _clear_tables(self) -> list[str]:
        return [row[0] for row in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
            _CLEAR_TABLES)]

    def seal_clear_names(self, seal_for: Callable[[str], NameSeal | None]) -> SealedNames:
        """Convert the clear bucket and hold rows of an older catalog into sealed entries
        (merged with what is there), drop the clear tables and rewrite the file (``VACUUM``),
        in one transaction: a crash leaves either the old catalog or the new one. Rows of
        tenants *seal_for* has no key for (shredded) are dropped. Idempotent."""
        with self._lock:
            tables = self._clear_tables()
            if not tables:
                return SealedNames(0, 0, 0)
            made: list[Entry] = []
            dropped = 0
            if "buckets" in tables:
                for tenant, name, days, created in self._db.execute(
                        "SELECT tenant, name, retention_days, created FROM buckets").fetchall():
                    seal = seal_for(tenant)
                    if seal is None:
                        dropped += 1
                    else:
                        made.append(seal_bucket(seal, tenant, name, days, _u(created)))
            if "holds" in tables:
                for tenant, bucket, key, held, by, hlc in self._db.execute(
                        "SELECT tenant, bucket, key, held, by, hlc FROM holds").fetchall():
                    seal = seal_for(tenant)
                    if seal is None:
                        dropped += 1
                    else:
                        made.append(seal_hold(seal, tenant, bucket, key, bool(held), by,
                                              _u(hlc)))
            changed: dict[tuple[str, ...], Entry] = {}
            for entry in made:
                old = changed.get(entry.ident) or self._entries.get(entry.ident)
                changed[entry.ident] = entry if old is None else merge(old, entry)
            changed = {i: e for i, e in changed.items()
                       if isinstance(e, BucketEntry | HoldEntry)
                       and not self._shredded(e.tenant, changed)}
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for entry in changed.values():
                    self._write(entry)
                for table in tables:  # secure_delete: the freed pages are zeroed
                    self._db.execute(f"DROP TABLE {table}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._entries.update(changed)
            self._db.execute("VACUUM")  # and the file no longer keeps their pages at all
            buckets = sum(isinstance(e, BucketEntry) for e in made)
            return SealedNames(buckets=buckets, holds=len(made) - buckets, dropped=dropped)

    def replace_wrapped(self, rewrapped: dict[str, bytes]) -> None:
        """Install tenants' keys wrapped under a new master key, in one transaction (used by
        master key rotation, which must not merge: the new wrap is not "earlier")."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for name, blob in rewrapped.items():
                    self._db.execute("UPDATE tenants SET wrapped = ? WHERE name = ?",
                                     (blob, name))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for name, blob in rewrapped.items():
                old = self._entries[("tenant", name)]
                assert isinstance(old, TenantEntry)
                self._entries[old.ident] = replace(old, wrapped=blob)

    def replace_wrapped_s3(self, rewrapped: dict[str, bytes]) -> None:
        """Install S3 secrets wrapped under a new master key (rotation; see
        :meth:`replace_wrapped`), in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for akid, blob in rewrapped.items():
                    self._db.execute("UPDATE s3keys SET wrapped = ? WHERE access_key_id = ?",
                                     (blob, akid))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for akid, blob in rewrapped.items():
                old = self._entries[("s3key", akid)]
                assert isinstance(old, S3KeyEntry)
                self._entries[old.ident] = replace(old, wrapped=blob)

    # -- reads -------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        with self._lock:
            return [self._entries[k] for k in sorted(self._entries)]

    def digest(self) -> bytes:
        """A hash of the whole catalog: equal digests, equal catalogs."""
        return blake3.blake3(packb([e.to_wire() for e in self.entries()])).digest()

    def tenant(self, name: str) -> TenantEntry | None:
        e = self._entries.get(("tenant", name))
        return e if isinstance(e, TenantEntry) else None

    def tenants(self) -> list[TenantEntry]:
        return [e for e in self.entries() if isinstance(e, TenantEntry)]

    def bucket(self, tenant: str, bucket_id: bytes) -> BucketEntry | None:
        """The bucket entry of *bucket_id* (``NameSeal.bucket_id`` of its name)."""
        e = self._entries.get(("bucket", tenant, bucket_id.hex()))
        return e if isinstance(e, BucketEntry) else None

    def buckets(self, tenant: str | None = None) -> list[BucketEntry]:
        return [e for e in self.entries() if isinstance(e, BucketEntry)
                and (tenant is None or e.tenant == tenant)]

    def hold(self, tenant: str, name_id: bytes) -> HoldEntry | None:
        """The hold entry of *name_id* (``NameSeal.name_id`` of its bucket and key)."""
        e = self._entries.get(("hold", tenant, name_id.hex()))
        return e if isinstance(e, HoldEntry) else None

    def holds(self, tenant: str | None = None) -> list[HoldEntry]:
        return [e for e in self.entries() if isinstance(e, HoldEntry)
                and (tenant is None or e.tenant == tenant)]

    def is_revoked(self, serial: str) -> bool:
        """Whether the certificate of *serial* (lowercase hex) is revoked; one dict lookup, no
        lock: the handshake asks it for every connection."""
        return ("revoked", serial) in self._entries

    def s3_key(self, access_key_id: str) -> S3KeyEntry | None:
        """One dict lookup, no lock: asked for every S3 request."""
        e = self._entries.get(("s3key", access_key_id))
        return e if isinstance(e, S3KeyEntry) else None

    def s3_keys(self, tenant: str | None = None) -> list[S3KeyEntry]:
        return [e for e in self.entries() if isinstance(e, S3KeyEntry)
                and (tenant is None or e.tenant == tenant)]

    def revoked(self, tenant: str | None = None) -> list[RevokedEntry]:
        return [e for e in self.entries() if isinstance(e, RevokedEntry)
                and (tenant is None or e.tenant == tenant)]


def tenant_in_catalog(path: Path, name: str) -> bool:
    """Whether the catalog file at *path* (of a node, running or not) knows tenant *name*;
    read-only, for tools that must not create keys the catalog already has."""
    return tenant_state_in_catalog(path, name) is not None


def tenant_keys_in_catalog(path: Path, name: str, master: bytes) -> TenantKeys | None:
    """The keys of live tenant *name* in the catalog file at *path* (of a node, running or
    not), unwrapped with *master*; None if the catalog has no keys for it (unknown, shredded,
    abandoned). Read-only, for offline tools (``hdsd audit export`` opening sealed names)."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT wrapped FROM tenants WHERE name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:
        return None  # no table yet
    finally:
        db.close()
    if row is None or not row[0]:
        return None
    return unwrap_keys(master, name, bytes(row[0]))


def tenant_state_in_catalog(path: Path, name: str) -> str | None:
    """``"live"``, ``"shredded"``, ``"pending"`` or ``"abandoning"`` (a creation not confirmed
    yet), or None when the catalog file at *path* (of a node, running or not) does not know
    tenant *name* (or knows it abandoned); read-only, for offline tools (``hdsd cert issue``)."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT * FROM tenants WHERE name = ?", (name,)).fetchone()
        columns = [c[0] for c in db.execute("SELECT * FROM tenants LIMIT 0").description]
    except sqlite3.OperationalError:
        return None  # no table yet
    finally:
        db.close()
    if row is None:
        return None
    fields = dict(zip(columns, row, strict=True))
    if _u(fields["shredded"]) != 0:
        return "shredded"
    state = fields.get("state", "confirmed")  # a catalog from before creations were confirmed
    if state == "abandoned":
        return None  # an abandoned creation holds no keys: the name is free for a new one
    return "live" if state == "confirmed" else str(state)
