"""Hints: durable notes of versions a replica has not received yet.

When a write is acknowledged while a replica has not confirmed it (degraded mode, a replica
slower than the policy requires, a dead peer), the coordinator records one hint per (replica,
version) *before* acknowledging. The hint names the version; its content is in the local store.
Replay (``_replay.HintReplayer``) streams hinted versions to their replica in insertion order
and deletes each hint once the replica confirmed it durable. Replay is idempotent: the receiver's
store ignores records it already holds, so a hint replayed twice costs bandwidth, never data.

The hints live in their own SQLite database with ``synchronous=FULL``: each batch of hints is
fsynced before the acknowledgement it protects. The backlog (count, bytes, oldest) is the live
RPO that ``hdsd status`` shows.

A hint's bucket and key are sealed under its tenant's key (``names``: nonce || AEAD of
msgpack ``[bucket, key]``, associated data ``b"hdsd-hint-names-v1\0" || tenant``), like every
name at rest (docs/design-notes.md, *Names sealed at rest*); ``bucket`` and ``key`` stay empty.
A hint whose tenant has no key any more (shredded) names nothing that can still be replayed:
:meth:`HintStore.pending` returns it with ``bucket = key = None`` and replay drops it.
``secure_delete`` zeroes replayed hints.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import HdsdError
from .._packing import PackError, packb, unpackb
from ..store import Sealing, Version

__all__ = ["Backlog", "Hint", "HintStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    tenant TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
    hlc INTEGER NOT NULL, node TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    names BLOB
);
CREATE INDEX IF NOT EXISTS hints_by_target ON hints (target, id);
"""


@dataclass(frozen=True, slots=True)
class Hint:
    id: int
    target: str
    tenant: str
    bucket: str | None  # None: sealed under a key this node no longer has (shredded tenant)
    key: str | None
    hlc: int
    node: str
    size: int
    created: float


@dataclass(frozen=True, slots=True)
class Backlog:
    versions: int
    bytes: int
    oldest_created: float | None  # wall-clock seconds; None when empty

    def age(self, now: float | None = None) -> float:
        if self.oldest_created is None:
            return 0.0
        return max(0.0, (now or time.time()) - self.oldest_created)


_AAD = b"hdsd-hint-names-v1\x00"


class HintStore:
    def __init__(self, path: Path, sealing: Sealing) -> None:
        self._sealing = sealing
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(hints)")}
        if "names" not in columns:  # hints written before names were sealed: kept, in clear
            self._db.execute("ALTER TABLE hints ADD COLUMN names BLOB")
        self._lock = threading.Lock()

    def _seal(self, v: Version) -> bytes:
        seal = self._sealing.seal_for(v.tenant)
        if seal is None:  # the store refuses such versions first; never write names in clear
            raise HdsdError(f"tenant {v.tenant!r} has no key here: cannot hint its versions")
        return seal.seal(packb([v.bucket, v.key]), _AAD + v.tenant.encode())

    def _open(self, tenant: str, bucket: str, key: str, names: bytes | None
              ) -> tuple[str | None, str | None]:
        if names is None:
            return bucket, key
        seal = self._sealing.seal_for(tenant)
        if seal is None:
            return None, None
        try:
            b, k = unpackb(seal.open(names, _AAD + tenant.encode()))
        except (HdsdError, PackError, ValueError, TypeError):
            return None, None
        return (b, k) if isinstance(b, str) and isinstance(k, str) else (None, None)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, targets: Sequence[str], versions: Sequence[Version]) -> None:
        """Durably record that each target still needs each version (blocking: one fsync)."""
        now = time.time()
        if not targets:
            return
        sealed = [(v, self._seal(v)) for v in versions]
        rows = [(t, v.tenant, "", "", v.hlc, v.node, v.size, now, names)
                for t in targets for v, names in sealed]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO hints (target, tenant, bucket, key, hlc, node, size, created, names)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def pending(self, target: str, limit: int = 100) -> list[Hint]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, target, tenant, bucket, key, hlc, node, size, created, names"
                " FROM hints WHERE target = ? ORDER BY id LIMIT ?", (target, limit)).fetchall()
        return [Hint(i, t, tenant, *self._open(tenant, b, k, names), h, n, size, created)
                for i, t, tenant, b, k, h, n, size, created, names in rows]

    def remove(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM hints WHERE id = ?", [(i,) for i in ids])
            self._db.execute("COMMIT")

    def drop_target(self, target: str) -> int:
        """Forget every hint for *target* (it left the layout: the keys it lacked live on
        their new replicas); returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            n = self._db.execute("DELETE FROM hints WHERE target = ?", (target,)).rowcount
            self._db.execute("COMMIT")
        return int(n)

    def backlog(self, target: str | None = None) -> Backlog:
        query = "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM hints"
        args: tuple[str, ...] = ()
        if target is not None:
            query += " WHERE target = ?"
            args = (target,)
        with self._lock:
            count, size, oldest = self._db.execute(query, args).fetchone()
        return Backlog(versions=count, bytes=size, oldest_created=oldest)

    def targets(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT target FROM hints")]
