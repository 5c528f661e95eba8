"""Hints: durable notes of versions a replica has not received yet.

When a write is acknowledged while a replica has not confirmed it (degraded mode, a replica
slower than the policy requires, a dead peer), the coordinator records one hint per (replica,
version) *before* acknowledging. The hint names the version; its content is in the local store.
Replay (:class:`HintReplayer`) streams hinted versions to their replica in insertion order and
deletes each hint once the replica confirmed it durable. Replay is idempotent: the receiver's
store ignores records it already holds, so a hint replayed twice costs bandwidth, never data.

The hints live in their own SQLite database with ``synchronous=FULL``: each batch of hints is
fsynced before the acknowledgement it protects. The backlog (count, bytes, oldest) is the live
RPO that ``hdsd status`` shows.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..store import Version

__all__ = ["Backlog", "Hint", "HintStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    tenant TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
    hlc INTEGER NOT NULL, node TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS hints_by_target ON hints (target, id);
"""


@dataclass(frozen=True, slots=True)
class Hint:
    id: int
    target: str
    tenant: str
    bucket: str
    key: str
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


class HintStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, targets: Sequence[str], versions: Sequence[Version]) -> None:
        """Durably record that each target still needs each version (blocking: one fsync)."""
        now = time.time()
        rows = [(t, v.tenant, v.bucket, v.key, v.hlc, v.node, v.size, now)
                for t in targets for v in versions]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO hints (target, tenant, bucket, key, hlc, node, size, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def pending(self, target: str, limit: int = 100) -> list[Hint]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, target, tenant, bucket, key, hlc, node, size, created FROM hints "
                "WHERE target = ? ORDER BY id LIMIT ?", (target, limit)).fetchall()
        return [Hint(*row) for row in rows]

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
