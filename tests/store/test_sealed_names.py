"""Names sealed at rest: the record format, and the sealed index answering exactly like the
clear one did (point lookups, listings by prefix in key order, bucket lists)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd._errors import IntegrityError, PermissionDenied, StoreError
from hdsd._packing import packb, unpackb
from hdsd.pipeline import NameSeal
from hdsd.store import Store, Version
from hdsd.store import _format as F
from hdsd.store._records import decode_record, encode_record
from hdsd.store._sealed import SealedVersion, open_version, seal_version
from tests.helpers.sealing import SEALING, TestSealing, tenant_keys

from ._util import inline_version, tombstone

SECRET_BUCKET = "patient-4242-dupont"
SECRET_KEY = "dossier/patient-4242-martin.pdf"


def _meta_version(hlc: int = 7) -> Version:
    v = inline_version("t", SECRET_BUCKET, SECRET_KEY, hlc, "n1", b"IRM")
    return replace(v, metadata={"patient-nir": "1-57-02-75-123"})


# --- the record format ----------------------------------------------------------------------
def test_a_version_record_holds_no_name_and_opens_back() -> None:
    v = _meta_version()
    enc = encode_record(v, SEALING)
    for needle in (b"patient-4242", b"dupont", b"martin", b"patient-nir", b"1-57-02"):
        assert needle not in enc.body
    stored = decode_record(F.KIND_VERSION, enc.body)
    assert isinstance(stored, SealedVersion)
    seal = NameSeal(tenant_keys("t"))
    assert (stored.tenant, stored.hlc, stored.node) == ("t", 7, "n1")
    assert stored.name_id == seal.name_id(SECRET_BUCKET, SECRET_KEY)
    assert stored.bucket_id == seal.bucket_id(SECRET_BUCKET)
    assert open_version(stored.body, seal) == v
    # Sealing twice gives different bytes (fresh nonce) and the same ids.
    again = encode_record(v, SEALING)
    assert again.body != enc.body and decode_record(F.KIND_VERSION, again.body) != stored


def test_sealed_names_are_bound_to_their_record_and_tenant() -> None:
    v = _meta_version()
    seal = NameSeal(tenant_keys("t"))
    stored = seal_version(v, seal)
    moved = seal_version(replace(v, hlc=8), seal)
    wire = unpackb(stored.body)
    wire["e"] = unpackb(moved.body)["e"]  # names sealed for another version (hlc 8)
    with pytest.raises(IntegrityError):
        open_version(packb(wire), seal)
    with pytest.raises(IntegrityError):
        open_version(stored.body, NameSeal(tenant_keys("other")))  # another tenant's key


def test_ids_depend_on_the_tenant_key_and_on_both_names() -> None:
    a, b = NameSeal(tenant_keys("a")), NameSeal(tenant_keys("b"))
    assert a.name_id("x", "y") != b.name_id("x", "y")
    assert a.name_id("a", "b\0c") != a.name_id("a\0b", "c")
    assert a.bucket_id("x") != a.name_id("x", "")
    assert a.name_id("x", "y") == NameSeal(tenant_keys("a")).name_id("x", "y")  # both sites


def test_a_tenant_without_a_key_is_refused(tmp_path: Path) -> None:
    sealing = TestSealing()
    sealing.shred("gone")
    with Store.open(tmp_path, sealing=sealing) as store:
        with pytest.raises(PermissionDenied):
            store.commit_sync([inline_version("gone", "b", "k", 1, "n", b"x")])
        store.commit_sync([inline_version("t", "b", "k", 1, "n", b"x")])
        sealing.shred("t")  # shredded while open: nothing of it opens any more
        with pytest.raises(PermissionDenied):
            store.current("t", "b", "k")
        with pytest.raises(PermissionDenied):
            store.list_current("t", "b")
        assert list(store.iter_versions()) == []


def test_a_store_of_the_older_format_is_refused_with_the_way_to_migrate(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        store.commit_sync([inline_version("t", "b", "k", 1, "n", b"x")])
    seg = tmp_path / F.segment_name(1)
    data = bytearray(seg.read_bytes())
    head = F.SEGMENT_HEADER.pack(F.SEGMENT_MAGIC, 1, 0, 0, 1, 0)[:24]
    data[:32] = head + F.U64.pack(F.digest(head))
    seg.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="hdsd store migrate"):
        Store.open(tmp_path, sealing=SEALING)


# --- the index answers like the clear one -------------------------------------------------------
_ALPHABET = st.sampled_from(["a", "b", "/", "-", "é", "\x00", "\U0010ffff", "z", "\ue000"])
_KEYS = st.text(_ALPHABET, min_size=0, max_size=4)
_OPS = st.lists(st.tuples(st.sampled_from(["b1", "b2"]), _KEYS, st.booleans()), min_size=1,
                max_size=40)


def _model_current(ops: list[tuple[str, str, bool]], hlcs: list[int], bucket: str
                   ) -> dict[str, tuple[int, bool]]:
    heads: dict[str, tuple[int, bool]] = {}
    for (b, key, deleted), hlc in zip(ops, hlcs, strict=True):
        if b == bucket:
            heads[key] = (hlc, deleted)  # ascending HLCs: the last one wins
    return heads


@given(ops=_OPS, prefix=_KEYS, after=_KEYS, limit=st.integers(1, 7),
       include_deleted=st.booleans(), list_between=st.booleans())
def test_listings_match_the_clear_semantics(ops: list[tuple[str, str, bool]], prefix: str,
                                            after: str, limit: int, include_deleted: bool,
                                            list_between: bool) -> None:
    d = tempfile.mkdtemp()
    try:
        with Store.open(d, sealing=SEALING, segment_bytes=1 << 20) as store:
            hlcs = list(range(1, len(ops) + 1))
            half = len(ops) // 2
            for i, ((bucket, key, deleted), hlc) in enumerate(zip(ops, hlcs, strict=True)):
                v = (tombstone("t", bucket, key, hlc, "n") if deleted
                     else inline_version("t", bucket, key, hlc, "n", b"x"))
                store.commit_sync([v])
                if list_between and i == half:
                    store.list_current("t", "b1")  # the cache is built mid-way, then kept current
            heads = _model_current(ops, hlcs, "b1")
            # list_current: keys >= prefix and starting with it, > after, in key order
            expect = [k for k in sorted(heads) if k.startswith(prefix) and k > after
                      and (include_deleted or not heads[k][1])][:limit]
            got = store.list_current("t", "b1", prefix=prefix, after=after, limit=limit,
                                     include_deleted=include_deleted)
            assert [v.key for v in got] == expect
            assert [v.hlc for v in got] == [heads[k][0] for k in expect]
            # list_versions, paged to the end through its cursor
            every = sorted((key, hlc) for (b, key, _), hlc in zip(ops, hlcs, strict=True)
                           if b == "b1" and key.startswith(prefix))
            paged: list[tuple[str, int]] = []
            cursor = None
            while True:
                page = store.list_versions("t", "b1", prefix=prefix, after=cursor, limit=limit)
                if not page:
                    break
                paged += [(v.key, v.hlc) for v in page]
                cursor = (page[-1].key, page[-1].hlc, page[-1].node)
            assert paged == every
            # point lookups and bucket lists
            for key, (hlc, _) in heads.items():
                current = store.current("t", "b1", key)
                assert current is not None and current.hlc == hlc
                assert [v.hlc for v in store.versions("t", "b1", key)] == sorted(
                    h for (b, k, _), h in zip(ops, hlcs, strict=True) if b == "b1" and k == key)
            buckets = sorted({b for b, _, _ in ops})
            assert store.buckets("t") == buckets
            assert store.buckets("t", after="b1") == [b for b in buckets if b > "b1"]
    finally:
        shutil.rmtree(d)


def test_a_listing_sees_keys_written_after_its_cache_was_built(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        store.commit_sync([inline_version("t", "b", f"k{i}", i + 1, "n", b"x")
                           for i in range(0, 10, 2)])
        assert [v.key for v in store.list_current("t", "b")] == ["k0", "k2", "k4", "k6", "k8"]
        store.commit_sync([inline_version("t", "b", "k3", 20, "n", b"x")])
        assert [v.key for v in store.list_current("t", "b", prefix="k", after="k2")] == [
            "k3", "k4", "k6", "k8"]
    with Store.open(tmp_path, sealing=SEALING) as store:  # rebuilt after a reopen
        assert len(store.list_current("t", "b")) == 6


def test_warming_caches_the_largest_buckets_within_bounds_and_stops_when_told(
        tmp_path: Path) -> None:
    sealing = TestSealing()
    sizes = {("t", "big"): 30, ("t", "mid"): 12, ("t", "small"): 3, ("gone", "big"): 20}
    with Store.open(tmp_path, sealing=sealing) as store:
        store.commit_sync([inline_version(t, b, f"k{i:02}", i + 1, "n", b"x")
                           for (t, b), n in sizes.items() for i in range(n)])
    sealing.shred("gone")  # no key: never opened, never cached

    def cached(store: Store) -> dict[tuple[str, bytes], int]:
        return {ident: len(c.keys) for ident, c in store._index._names.items()}

    seal = NameSeal(tenant_keys("t"))
    with Store.open(tmp_path, sealing=sealing) as store:
        assert store.warm_listings(lambda: True, max_names=100, min_keys=10) == (0, 0)
        calls = iter([False, True])  # told to stop inside the first bucket
        assert store.warm_listings(lambda: next(calls), max_names=100, min_keys=10) == (0, 0)
        assert cached(store) == {} and store._index._building == {}
        assert store.warm_listings(lambda: False, max_names=35, min_keys=10) == (1, 30)
        assert cached(store) == {("t", seal.bucket_id("big")): 30}
        assert store.warm_listings(lambda: False, max_names=45, min_keys=10) == (1, 12)
        assert cached(store) == {("t", seal.bucket_id("big")): 30,
                                 ("t", seal.bucket_id("mid")): 12}
        # A warm cache answers like a cold one, and sees what is written after it.
        store.commit_sync([inline_version("t", "big", "k15a", 99, "n", b"x")])
        assert [v.key for v in store.list_current("t", "big", prefix="k1")] == [
            f"k{i}" for i in range(10, 16)] + ["k15a"] + [f"k{i}" for i in range(16, 20)]


def test_a_listing_during_a_cache_build_waits_for_it_instead_of_building_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import hdsd.store._index as index_module

    with Store.open(tmp_path, sealing=SEALING) as store:
        store.commit_sync([inline_version("t", "b", f"k{i:03}", i + 1, "n", b"x")
                           for i in range(300)])
    from hdsd.store._sealed import TenantSeal, open_names

    opened = {"n": 0}

    def counting(body: bytes, seal: TenantSeal) -> tuple[str, str]:
        opened["n"] += 1
        return open_names(body, seal)

    monkeypatch.setattr(index_module, "open_names", counting)
    with Store.open(tmp_path, sealing=SEALING) as store:  # cold caches
        gate, inside = threading.Event(), threading.Event()
        calls = iter([False])  # the warm-up's loop asks once, then its build asks: held

        def stop() -> bool:
            if next(calls, None) is None:
                inside.set()
                gate.wait()
            return False

        warm = threading.Thread(target=store.warm_listings, args=(stop,),
                                kwargs={"max_names": 1000, "min_keys": 1})
        warm.start()
        assert inside.wait(30)
        listed: list[list[str]] = []
        listing = threading.Thread(target=lambda: listed.append(
            [v.key for v in store.list_current("t", "b", limit=1000)]))
        listing.start()
        listing.join(0.2)
        assert listing.is_alive()  # waiting for the build under way (it would be done else)
        gate.set()
        warm.join(30)
        listing.join(30)
        assert listed == [[f"k{i:03}" for i in range(300)]]
        assert opened["n"] == 300  # every name opened once, by the warm-up alone


def test_puts_into_a_cached_bucket_no_one_lists_keep_the_cache_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hdsd.store import _index as index_module

    monkeypatch.setattr(index_module, "PENDING_NAMES_MIN", 8)
    monkeypatch.setattr(index_module, "CACHED_NAMES", 100)
    with Store.open(tmp_path, sealing=SEALING) as store:
        names = store._index._names
        store.commit_sync([inline_version("t", "b", f"k{i:04}", i + 1, "n", b"x")
                           for i in range(40)])
        store.commit_sync([inline_version("t", "other", "o", 1, "n", b"x")])
        assert len(store.list_current("t", "other")) == 1
        assert len(store.list_current("t", "b")) == 40  # cached: 40 names, the last listed
        peak = 0
        for i in range(40, 240):  # a bucket written to and never listed again
            store.commit_sync([inline_version("t", "b", f"k{i:04}", i + 1, "n", b"x")])
            peak = max(peak, sum(len(c.keys) + len(c.pending) for c in names.values()))
            for c in names.values():
                assert len(c.pending) <= max(8, len(c.keys) // 4)
        assert peak <= 41 + 10  # 40 + 1 names cached, at most 40 // 4 pending
        # Dropped, not lost: the next listing opens every name again.
        assert [v.key for v in store.list_current("t", "b")] == [f"k{i:04}" for i in range(240)]
        # A listing that merges the pending names counts them against CACHED_NAMES: the
        # bucket listed before it makes room.
        monkeypatch.setattr(index_module, "CACHED_NAMES", 250)
        assert len(store.list_current("t", "other")) == 1
        assert len(store.list_current("t", "b")) == 240  # both cached: 241 names
        assert sorted(len(c.keys) for c in names.values()) == [1, 240]
        store.commit_sync([inline_version("t", "b", f"m{i:04}", 1000 + i, "n", b"x")
                           for i in range(10)])
        assert len(store.list_current("t", "b")) == 250
        assert [len(c.keys) for c in names.values()] == [250]  # "other" dropped: 251 > 250
