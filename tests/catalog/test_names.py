"""Retention locks and legal holds in the catalog: keyed ids and sealed names (never a name in
clear in the SQLite file), deterministic so that two nodes converge, dropped at a shred, and
migrated from a catalog written before names were sealed."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hdsd import IntegrityError, LegalHold
from hdsd.catalog import (
    BucketEntry,
    Catalog,
    HoldEntry,
    Keyring,
    TenantEntry,
    bucket_name,
    create_master_key,
    entry_from_wire,
    hold_names,
    load_master_key,
    seal_bucket,
    seal_hold,
)
from hdsd.cluster import HybridClock
from hdsd.node._tenancy import Tenancy
from hdsd.pipeline import NameSeal
from tests.helpers.sealing import tenant_keys

BUCKET = "patient-4242-dupont"
KEY = "dossier/patient-4242-martin/irm.dcm"
NEEDLES = [b"4242-dupont", b"4242-martin"]


def _seal(tenant: str = "t") -> NameSeal:
    return NameSeal(tenant_keys(tenant))


def _files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


def test_sealed_entries_open_and_are_the_same_bytes_whoever_makes_them() -> None:
    a, b = _seal(), _seal()  # two nodes holding the same tenant keys
    bucket = seal_bucket(a, "t", BUCKET, 30, created=5)
    assert bucket == seal_bucket(b, "t", BUCKET, 30, created=5)
    assert bucket.bucket_id == a.bucket_id(BUCKET)  # the store's id
    assert bucket_name(b, bucket) == BUCKET
    hold = seal_hold(a, "t", BUCKET, KEY, True, "admin@t", hlc=7)
    assert hold == seal_hold(b, "t", BUCKET, KEY, True, "admin@t", hlc=7)
    assert (hold.bucket_id, hold.name_id) == (a.bucket_id(BUCKET), a.name_id(BUCKET, KEY))
    assert hold_names(b, hold) == (BUCKET, KEY)
    for needle in NEEDLES:
        assert needle not in repr(bucket.to_wire()).encode() + hold.sealed + bucket.sealed
    # Different names, different bytes (no shared nonce); entries do not open elsewhere.
    other = seal_bucket(a, "t", BUCKET + "x", 30, created=5)
    assert other.sealed[:24] != bucket.sealed[:24]
    with pytest.raises(IntegrityError):
        bucket_name(_seal("u"), bucket)  # another tenant's key
    with pytest.raises(IntegrityError):
        bucket_name(a, replace(bucket, bucket_id=other.bucket_id))  # moved to another id
    with pytest.raises(IntegrityError):
        hold_names(a, replace(hold, tenant="u"))
    assert entry_from_wire(hold.to_wire()) == hold


def test_two_sites_extending_one_retention_converge(tmp_path: Path) -> None:
    seal = _seal()
    one, two = Catalog(tmp_path / "one.sqlite"), Catalog(tmp_path / "two.sqlite")
    try:
        # Each site extends the same bucket's retention on its own, then they sync.
        at_one = [seal_bucket(seal, "t", BUCKET, 10, created=3)]
        at_two = [seal_bucket(seal, "t", BUCKET, 20, created=4),
                  seal_hold(seal, "t", BUCKET, KEY, True, "a@t", hlc=9)]
        one.apply(at_one)
        two.apply(at_two)
        one.apply(two.entries())
        two.apply(one.entries())
        assert one.digest() == two.digest()
        entry = one.bucket("t", seal.bucket_id(BUCKET))
        assert entry is not None and (entry.retention_days, entry.created) == (20, 3)
        hold = two.hold("t", seal.name_id(BUCKET, KEY))
        assert hold is not None and hold.held
    finally:
        one.close()
        two.close()
    data = _files(tmp_path)
    for needle in NEEDLES:
        assert needle not in data


def test_a_shred_drops_the_tenants_locks_and_holds(tmp_path: Path) -> None:
    seal = _seal()
    cat = Catalog(tmp_path / "c.sqlite")
    tenant = TenantEntry(name="t", wrapped=b"k" * 72, created=1)
    ids = [seal.bucket_id(BUCKET), seal.name_id(BUCKET, KEY)]
    try:
        cat.apply([tenant, seal_bucket(seal, "t", BUCKET, 10, created=2),
                   seal_hold(seal, "t", BUCKET, KEY, True, "a@t", hlc=3),
                   seal_bucket(_seal("u"), "u", BUCKET, 10, created=2)])
        assert all(i in (tmp_path / "c.sqlite").read_bytes() for i in ids)
        cat.apply([replace(tenant, wrapped=b"", shredded=4)])
        assert cat.buckets("t") == [] and cat.holds("t") == []
        assert len(cat.buckets("u")) == 1  # other tenants keep theirs
        # A peer that has not heard of the shred yet pushes them back: refused.
        assert cat.apply([seal_hold(seal, "t", BUCKET, KEY, False, "a@t", hlc=5)]) == []
        assert cat.holds("t") == []
    finally:
        cat.close()
    reopened = Catalog(tmp_path / "c.sqlite")
    try:
        assert reopened.buckets("t") == [] and len(reopened.buckets("u")) == 1
    finally:
        reopened.close()
    data = _files(tmp_path)  # no id the former key could test guesses against
    assert not any(i in data for i in ids)


def _old_catalog(path: Path, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Add the clear tables of a catalog written before names were sealed."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE buckets (tenant TEXT NOT NULL, name TEXT NOT NULL, retention_days "
               "INTEGER NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (tenant, name))")
    db.execute("CREATE TABLE holds (tenant TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT "
               "NULL, held INTEGER NOT NULL, by TEXT NOT NULL, hlc INTEGER NOT NULL, "
               "PRIMARY KEY (tenant, bucket, key))")
    db.executemany("INSERT INTO buckets VALUES (?, ?, ?, ?)", rows["buckets"])
    db.executemany("INSERT INTO holds VALUES (?, ?, ?, ?, ?, ?)", rows["holds"])
    db.commit()
    db.close()


def test_migration_seals_an_older_catalogs_names(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    Catalog(path).close()
    shift = 1 << 63
    _old_catalog(path, {
        "buckets": [("t", BUCKET, 30, 5 - shift), ("gone", "gone-4242-dupont", 1, 5 - shift)],
        "holds": [("t", BUCKET, KEY, 1, "a@t", 7 - shift),
                  ("gone", "gone-4242-dupont", "k", 1, "a@gone", 7 - shift)]})
    assert any(n in path.read_bytes() for n in NEEDLES)
    cat = Catalog(path)
    try:
        assert cat.clear_names() == 4
        done = cat.seal_clear_names(lambda t: _seal(t) if t == "t" else None)
        assert (done.buckets, done.holds, done.dropped) == (1, 1, 2)
        assert cat.clear_names() == 0
        assert cat.seal_clear_names(_seal).buckets == 0  # idempotent
        seal = _seal()
        bucket = cat.bucket("t", seal.bucket_id(BUCKET))
        assert bucket is not None and (bucket.retention_days, bucket.created) == (30, 5)
        hold = cat.hold("t", seal.name_id(BUCKET, KEY))
        assert hold is not None and hold.held and hold.by == "a@t" and hold.hlc == 7
        assert hold == seal_hold(seal, "t", BUCKET, KEY, True, "a@t", 7)  # as made today
    finally:
        cat.close()
    data = _files(tmp_path)
    for needle in [*NEEDLES, b"gone-4242"]:
        assert needle not in data, needle


def test_a_node_seals_its_older_catalog_at_start(tmp_path: Path) -> None:
    create_master_key(tmp_path / "m.key")
    master = load_master_key(tmp_path / "m.key")

    def tenancy() -> Tenancy:
        return Tenancy(tmp_path, master, Keyring(tmp_path / "keyring.hdsd", master),
                       HybridClock(), operator_tenant="ops", evict=lambda _: None)

    t = tenancy()
    t.catalog.apply([replace(e, state="confirmed") for e in t.create_tenant("t", 0)
                     if isinstance(e, TenantEntry)])
    t.close()
    _old_catalog(tmp_path / "catalog.sqlite", {"buckets": [("t", BUCKET, 30, 5 - (1 << 63))],
                                               "holds": [("t", BUCKET, KEY, 1, "a@t", 6)]})
    t = tenancy()
    try:
        assert t.catalog.clear_names() == 0
        assert [(e.retention_days, name) for e, name in t.open_buckets("t")] == [(30, BUCKET)]
        assert [(b, k) for _, b, k in t.open_holds()] == [(BUCKET, KEY)]
        assert t.retention_days("t", BUCKET) == 30
        assert isinstance(t.bucket_entry("t", BUCKET), BucketEntry)
        assert isinstance(t.hold_entry("t", BUCKET, KEY), HoldEntry)
    finally:
        t.close()
    data = _files(tmp_path)
    for needle in NEEDLES:
        assert needle not in data


async def test_a_sealed_hold_still_refuses_a_delete(tmp_path: Path) -> None:
    create_master_key(tmp_path / "m.key")
    master = load_master_key(tmp_path / "m.key")
    t = Tenancy(tmp_path, master, Keyring(tmp_path / "keyring.hdsd", master), HybridClock(),
                operator_tenant="ops", evict=lambda _: None)
    try:
        t.catalog.apply([replace(e, state="confirmed") for e in t.create_tenant("t", 0)
                         if isinstance(e, TenantEntry)])
        t.catalog.apply(t.set_hold("t", BUCKET, KEY, True, "a@t"))
        node: Any = SimpleNamespace(store=SimpleNamespace(tenant_usage=dict))
        with pytest.raises(LegalHold):
            await t.check_write(node, "t", BUCKET, KEY, size=None, delete=True)
        assert t.hold_entry("t", BUCKET, KEY + "x") is None
    finally:
        t.close()
    for needle in NEEDLES:
        assert needle not in _files(tmp_path)
