"""The index's format 3 (fewer B-trees per version): key-hash ranges and head lookups without
the secondary indexes format 2 had, and a format-2 index file upgraded in place at open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hdsd.store import Store
from hdsd.store._index import khash_of
from hdsd.store._store import INDEX_NAME
from tests.helpers.sealing import SEALING

from ._util import inline_version, tombstone

TENANTS = ("alpha", "beta", "gamma")


def _fill(path: Path) -> None:
    with Store.open(path, sealing=SEALING) as store:
        batch = [inline_version(t, "b", f"k{i}", 1 + i, "n1", f"{t}{i}".encode(),
                                request_id=f"{t}-{i}".encode())
                 for t in TENANTS for i in range(120)]
        store.commit_sync(batch)


def _indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path / INDEX_NAME)
    try:
        return {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        conn.close()


def _by_hash(store: Store, low: int, high: int) -> set[tuple[str, str, int]]:
    return {(v.tenant, v.key, v.hlc) for _, _, v in store.versions_by_key_hash(low, high)}


def _expected(store: Store, low: int, high: int) -> set[tuple[str, str, int]]:
    return {(v.tenant, v.key, v.hlc) for v in store.iter_versions()
            if low <= khash_of(store.name_id(v.tenant, v.bucket, v.key)) <= high}


def test_key_hash_ranges_match_every_tenants_versions_at_their_bounds(tmp_path: Path) -> None:
    _fill(tmp_path / "s")
    assert "versions_by_khash" not in _indexes(tmp_path / "s")
    with Store.open(tmp_path / "s", sealing=SEALING) as store:
        hashes = sorted(khash_of(store.name_id(v.tenant, v.bucket, v.key))
                        for v in store.iter_versions())
        top = (1 << 32) - 1
        ranges = [(0, top), (0, 0), (top, top), (hashes[0], hashes[0]),
                  (hashes[-1], top), (hashes[10], hashes[200]), (hashes[10] + 1, hashes[200] - 1),
                  (hashes[50], hashes[49]), (-5, hashes[3]), (hashes[300], 1 << 40)]
        for low, high in ranges:
            assert _by_hash(store, low, high) == _expected(store, low, high), (low, high)
        assert len(_by_hash(store, 0, top)) == 3 * 120


# The tables of a format-2 index that format 3 changed, as an hdsd of format 2 created them.
_FORMAT_2 = """
CREATE TABLE heads_2 (
    tenant TEXT NOT NULL, nid BLOB NOT NULL, bid BLOB NOT NULL,
    hlc INTEGER NOT NULL, node TEXT NOT NULL, tombstone INTEGER NOT NULL, vid INTEGER NOT NULL,
    PRIMARY KEY (tenant, nid)
) WITHOUT ROWID;
INSERT INTO heads_2 SELECT tenant, nid, bid, hlc, node, tombstone, vid FROM heads;
DROP TABLE heads;
ALTER TABLE heads_2 RENAME TO heads;
CREATE INDEX heads_by_bucket ON heads (tenant, bid);
CREATE INDEX versions_by_khash ON versions (khash);
UPDATE state SET format = 2;
"""


def _to_format_2(path: Path) -> None:
    conn = sqlite3.connect(path / INDEX_NAME, isolation_level=None)
    try:
        conn.executescript(_FORMAT_2)
    finally:
        conn.close()


def _format(path: Path) -> int:
    conn = sqlite3.connect(path / INDEX_NAME)
    try:
        return int(conn.execute("SELECT format FROM state").fetchone()[0])
    finally:
        conn.close()


def test_a_format_2_index_is_upgraded_at_open_and_keeps_every_answer(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill(path)
    with Store.open(path, sealing=SEALING) as store:
        # A purge moves a head back and a delete marker makes one: both read heads by key.
        store.commit_sync([tombstone("beta", "b", "k3", 50_000, "n1")])
        before = {t: [(v.key, v.hlc) for v in store.list_current(t, "b", limit=1000,
                                                                 include_deleted=True)]
                  for t in TENANTS}
    _to_format_2(path)
    assert {"heads_by_bucket", "versions_by_khash"} <= _indexes(path) and _format(path) == 2
    with Store.open(path, sealing=SEALING) as store:
        assert _format(path) == 3
        assert not {"heads_by_bucket", "versions_by_khash"} & _indexes(path)
        after = {t: [(v.key, v.hlc) for v in store.list_current(t, "b", limit=1000,
                                                                include_deleted=True)]
                 for t in TENANTS}
        assert after == before
        assert len(store.list_current("beta", "b", limit=1000)) == 119  # k3 is deleted
        assert store.current("beta", "b", "k3") is not None  # the delete marker
        assert store.current("beta", "b", "k7") is not None
        assert store.buckets("alpha") == ["b"]
        found = store.find_request("gamma", b"gamma-9")
        assert found is not None and found.key == "k9"
        assert len(_by_hash(store, 0, (1 << 32) - 1)) == 3 * 120 + 1
        # Written after the upgrade: a new key, and a newer version of an old one.
        store.commit_sync([inline_version("alpha", "b", "new", 60_000, "n1", b"x"),
                           inline_version("alpha", "b", "k1", 60_001, "n1", b"y")])
    with Store.open(path, sealing=SEALING) as store:
        assert _format(path) == 3
        assert store.current("alpha", "b", "new") is not None
        current = store.current("alpha", "b", "k1")
        assert current is not None and current.hlc == 60_001
        assert len(store.list_current("alpha", "b", limit=1000)) == 121


def test_head_lookups_use_the_heads_key_not_a_scan(tmp_path: Path) -> None:
    _fill(tmp_path / "s")
    conn = sqlite3.connect(tmp_path / "s" / INDEX_NAME)
    try:
        for sql in ("SELECT vid FROM heads WHERE tenant = ? AND bid = ? AND nid = ?",
                    "SELECT nid FROM heads WHERE tenant = ? AND bid = ?",
                    "SELECT vid, body FROM versions WHERE tenant = ? AND nid >= ? AND nid < ?"):
            plan = " ".join(str(r[-1]) for r in conn.execute(
                f"EXPLAIN QUERY PLAN {sql}", ("t", b"b", b"n")[:sql.count("?")]))
            assert "SEARCH" in plan and "SCAN" not in plan, (sql, plan)
    finally:
        conn.close()
