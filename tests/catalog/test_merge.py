"""The catalog converges: any order (and any repetition) of the same updates gives the same
catalog, in memory and once reloaded from SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd import IntegrityError
from hdsd.catalog import (
    BucketEntry,
    Catalog,
    Entry,
    HoldEntry,
    RevokedEntry,
    S3KeyEntry,
    TenantEntry,
    entry_from_wire,
    merge,
)
from hdsd.catalog._model import creation_order

names = st.sampled_from(["a", "b"])
hlcs = st.integers(1, 50)
blobs = st.sampled_from([b"k" * 72, b"j" * 72])


@st.composite
def tenants(draw: st.DrawFn) -> TenantEntry:
    shredded = draw(st.booleans())
    # creation fields: older entries (no id, confirmed) and confirmed or not ones
    state = draw(st.sampled_from(["confirmed", "pending", "abandoning", "abandoned"]))
    keyless = shredded or state == "abandoned"
    return TenantEntry(name=draw(names), wrapped=b"" if keyless else draw(blobs),
                       created=draw(hlcs), quota_bytes=draw(st.integers(0, 5)),
                       quota_hlc=draw(hlcs), shredded=draw(hlcs) if shredded else 0,
                       plan=draw(st.sampled_from(["standard", "backup"])),
                       epoch=draw(st.integers(0, 1)),
                       creation=draw(st.sampled_from([b"", b"\x01" * 16, b"\x02" * 16])),
                       state=state, origin=draw(st.sampled_from(["", "dc1-n1", "keyring"])))


ids = st.sampled_from([b"\x01" * 16, b"\x02" * 16])
sealed = st.sampled_from([b"s" * 48, b"t" * 48])  # (deterministic in use; any bytes here)
buckets = st.builds(BucketEntry, tenant=names, bucket_id=ids, sealed=sealed,
                    retention_days=st.integers(0, 9), created=hlcs)
holds = st.builds(HoldEntry, tenant=names, bucket_id=ids, name_id=ids, sealed=sealed,
                  held=st.booleans(), by=names, hlc=hlcs)
revocations = st.builds(
    RevokedEntry, serial=st.sampled_from(["1f", "a0b1"]), hlc=hlcs, by=names,
    reason=st.sampled_from(["", "laptop stolen"]), kind=st.sampled_from(["", "client", "node"]),
    tenant=st.sampled_from(["", "a"]), name=st.sampled_from(["", "pacs"]),
    role=st.sampled_from(["", "writer"]), not_after=st.integers(0, 3))


@st.composite
def s3keys(draw: st.DrawFn) -> S3KeyEntry:
    revoked = draw(st.sampled_from([0, 0, 7, 9]))
    return S3KeyEntry(access_key_id=draw(st.sampled_from(["HDSDAAAAAAAAAAAAAAAA",
                                                         "HDSDBBBBBBBBBBBBBBBB"])),
                      tenant=draw(names), role=draw(st.sampled_from(["writer", "reader"])),
                      wrapped=b"" if revoked else draw(blobs), created=draw(hlcs),
                      by=draw(names), revoked=revoked,
                      revoked_by=draw(names) if revoked else "")


entries = st.one_of(tenants(), buckets, holds, revocations, s3keys())


def _fold(updates: list[Entry]) -> dict[tuple[str, ...], Entry]:
    state: dict[tuple[str, ...], Entry] = {}
    for e in updates:
        state[e.ident] = merge(state[e.ident], e) if e.ident in state else e
    return state


def _held(updates: list[Entry]) -> list[Entry]:
    """What a catalog holds of *updates*: their fold, without the buckets and holds of
    tenants shredded (their ids and sealed names are made with the destroyed key)."""
    state = _fold(updates)
    shredded = {e.name for e in state.values() if isinstance(e, TenantEntry) and e.is_shredded}
    return sorted((e for e in state.values()
                   if not (isinstance(e, BucketEntry | HoldEntry) and e.tenant in shredded)),
                  key=lambda e: e.ident)


@given(st.lists(entries, max_size=12), st.randoms(use_true_random=False))
def test_any_order_and_repetition_converges(updates: list[Entry], rnd: object) -> None:
    shuffled = list(updates)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    repeated = shuffled + updates[: len(updates) // 2]
    assert _fold(updates) == _fold(shuffled) == _fold(repeated)


@given(entries, entries, entries)
def test_merge_is_a_semilattice(a: Entry, b: Entry, c: Entry) -> None:
    same = [e for e in (b, c) if e.ident == a.ident]
    assert merge(a, a) == a
    for x in same:
        assert merge(a, x) == merge(x, a)
    if len(same) == 2:
        assert merge(merge(a, b), c) == merge(a, merge(b, c))


@given(st.lists(tenants(), min_size=1, max_size=8))
def test_shredding_is_terminal_and_keeps_no_keys(updates: list[TenantEntry]) -> None:
    for merged in _fold(list(updates)).values():
        assert isinstance(merged, TenantEntry)
        shredded_inputs = [u for u in updates if u.name == merged.name and u.is_shredded]
        assert merged.is_shredded == bool(shredded_inputs)
        if merged.is_shredded:
            assert merged.wrapped == b""


@given(st.lists(s3keys(), min_size=1, max_size=8))
def test_s3_key_revocation_is_terminal_and_keeps_no_secret(updates: list[S3KeyEntry]) -> None:
    for ident, merged in _fold(list(updates)).items():
        assert isinstance(merged, S3KeyEntry)
        mine = [u for u in updates if u.ident == ident]
        assert merged.is_revoked == any(u.is_revoked for u in mine)
        if merged.is_revoked:
            assert merged.wrapped == b""
            assert merged.revoked == min(u.revoked for u in mine if u.is_revoked)
        first = min(mine, key=lambda u: (u.created, u.by, u.tenant, u.role, u.wrapped))
        assert (merged.tenant, merged.role, merged.created) == (first.tenant, first.role,
                                                                first.created)


def test_revoked_s3_secret_leaves_the_sqlite_files(tmp_path: Path) -> None:
    secret = bytes(range(200, 256)) + bytes(range(16))
    cat = Catalog(tmp_path / "c.sqlite")
    key = S3KeyEntry(access_key_id="HDSDAAAAAAAAAAAAAAAA", tenant="t", role="writer",
                     wrapped=secret, created=1, by="op")
    try:
        cat.apply([key])
        assert secret in (tmp_path / "c.sqlite").read_bytes()
        assert cat.s3_key(key.access_key_id) == key
        cat.apply([S3KeyEntry(access_key_id=key.access_key_id, tenant="t", role="writer",
                              wrapped=b"", created=1, by="op", revoked=5, revoked_by="op")])
        revoked = cat.s3_key(key.access_key_id)
        assert revoked is not None and revoked.is_revoked and revoked.wrapped == b""
    finally:
        cat.close()
    for f in tmp_path.iterdir():
        assert secret not in f.read_bytes(), f


@given(st.lists(buckets, min_size=1, max_size=8))
def test_retention_only_grows(updates: list[BucketEntry]) -> None:
    for ident, merged in _fold(list(updates)).items():
        assert isinstance(merged, BucketEntry)
        assert merged.retention_days == max(u.retention_days for u in updates
                                            if u.ident == ident)


@given(st.lists(entries, max_size=10), st.randoms(use_true_random=False))
def test_sqlite_catalog_converges_whatever_the_batches(
        tmp_path_factory: pytest.TempPathFactory, updates: list[Entry], rnd: object) -> None:
    root = tmp_path_factory.mktemp("cat")
    one, two = Catalog(root / "one.sqlite"), Catalog(root / "two.sqlite")
    try:
        one.apply(updates)
        shuffled = list(updates)
        rnd.shuffle(shuffled)  # type: ignore[attr-defined]
        for e in shuffled:
            two.apply([e])
        assert one.digest() == two.digest()
        assert one.entries() == _held(updates)
    finally:
        one.close()
        two.close()
    reopened = Catalog(root / "two.sqlite")
    try:
        assert reopened.entries() == _held(updates)
    finally:
        reopened.close()


@given(entries)
def test_wire_round_trip(e: Entry) -> None:
    assert entry_from_wire(e.to_wire()) == e


@pytest.mark.parametrize("doc", [
    None, [], {"kind": "nope"},
    # names in clear (an older node): refused, with what to do
    {"kind": "bucket", "tenant": "t", "name": "b", "retention_days": 1, "created": 1},
    {"kind": "hold", "tenant": "t", "bucket": "b", "key": "k", "held": True, "by": "x",
     "hlc": 1},
    {"kind": "bucket", "tenant": "t", "id": b"\x01" * 16, "sealed": b"s" * 48,
     "retention_days": -1, "created": 1},
    {"kind": "bucket", "tenant": "t", "id": b"\x01" * 15, "sealed": b"s" * 48,
     "retention_days": 1, "created": 1},
    {"kind": "hold", "tenant": "t", "bucket_id": b"\x01" * 16, "id": b"\x02" * 16,
     "sealed": "clear names", "held": True, "by": "x", "hlc": 1},
    {"kind": "hold", "tenant": "t", "bucket_id": b"\x01" * 16, "id": b"\x02" * 16,
     "sealed": b"s" * 48, "held": 1, "by": "x", "hlc": 1},
    # keys present although shredded: refused (shredding must leave no key bytes)
    {"kind": "tenant", "name": "t", "wrapped": b"x" * 72, "created": 1, "quota_bytes": 0,
     "quota_hlc": 0, "key_generation": 1, "shredded": 5},
    {"kind": "tenant", "name": "t", "wrapped": b"x" * 72, "created": 1, "quota_bytes": 0,
     "quota_hlc": 0, "key_generation": 1, "shredded": 0, "plan": "gold"},
    # an S3 key: a secret although revoked; an unknown role; a lowercase id
    {"kind": "s3key", "access_key_id": "HDSDAAAAAAAAAAAAAAAA", "tenant": "t", "role": "writer",
     "wrapped": b"x" * 60, "created": 1, "by": "op", "revoked": 3, "revoked_by": "op"},
    {"kind": "s3key", "access_key_id": "HDSDAAAAAAAAAAAAAAAA", "tenant": "t", "role": "root",
     "wrapped": b"x" * 60, "created": 1, "by": "op", "revoked": 0, "revoked_by": ""},
    {"kind": "s3key", "access_key_id": "hdsdaaaaaaaaaaaaaaaa", "tenant": "t", "role": "writer",
     "wrapped": b"x" * 60, "created": 1, "by": "op", "revoked": 0, "revoked_by": ""},
])
def test_malformed_entries_are_refused(doc: object) -> None:
    with pytest.raises(IntegrityError):
        entry_from_wire(doc)


def test_shredded_key_bytes_leave_the_sqlite_files(tmp_path: Path) -> None:
    secret = bytes(range(256))[:72]
    cat = Catalog(tmp_path / "c.sqlite")
    try:
        cat.apply([TenantEntry(name="t", wrapped=secret, created=1)])
        assert secret in (tmp_path / "c.sqlite").read_bytes()
        cat.apply([TenantEntry(name="t", wrapped=b"", created=2, shredded=3)])
    finally:
        cat.close()
    for f in tmp_path.iterdir():
        assert secret not in f.read_bytes(), f


@given(st.lists(tenants(), min_size=1, max_size=8))
def test_the_plan_is_the_earliest_creations(updates: list[TenantEntry]) -> None:
    # A plan never changes once every node has seen the creation: later entries (a quota
    # change, a shred, a racing creation) cannot move a tenant's keys to other nodes.
    # The plan is the winning creation's (test_confirm.py: a confirmed creation always wins);
    # among tenants from before confirmation (same epoch and state), the earliest creation's.
    for name, merged in _fold(list(updates)).items():
        assert isinstance(merged, TenantEntry)
        mine = [u for u in updates if u.ident == name]
        assert merged.plan == min(mine, key=creation_order).plan
        if all((u.epoch, u.state, u.creation) == (0, "confirmed", b"") for u in mine):
            assert merged.plan == min((u.created, u.plan) for u in mine)[1]


def test_a_standard_tenant_looks_as_before_plans_existed(tmp_path: Path) -> None:
    # Same wire map (and so the same catalog digest) as a node that predates plans.
    standard = TenantEntry(name="t", wrapped=b"k" * 72, created=1)
    assert "plan" not in standard.to_wire()
    assert TenantEntry(name="t", wrapped=b"k" * 72, created=1, plan="backup").to_wire()[
        "plan"] == "backup"
    # A catalog file written before plans (no column) opens, its tenants on the standard plan.
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tenants (name TEXT PRIMARY KEY, wrapped BLOB, created INTEGER "
               "NOT NULL, quota_bytes INTEGER NOT NULL, quota_hlc INTEGER NOT NULL, "
               "key_generation INTEGER NOT NULL, shredded INTEGER NOT NULL)")
    db.execute("INSERT INTO tenants VALUES ('t', ?, ?, 0, ?, 1, ?)",
               (b"k" * 72, 1 - (1 << 63), -(1 << 63), -(1 << 63)))
    db.commit()
    db.close()
    cat = Catalog(path)
    try:
        assert cat.tenant("t") == standard
        cat.apply([TenantEntry(name="b", wrapped=b"j" * 72, created=2, plan="backup")])
    finally:
        cat.close()
    cat = Catalog(path)
    try:
        assert cat.tenant("b") is not None and cat.tenant("b").plan == "backup"  # type: ignore[union-attr]
    finally:
        cat.close()


@given(st.lists(revocations, min_size=1, max_size=10), st.randoms(use_true_random=False))
def test_revocation_is_terminal_and_remembers_the_first(updates: list[RevokedEntry],
                                                       rnd: object) -> None:
    # A grow-only set keyed by serial: every serial ever revoked stays revoked, whatever else
    # arrives in whatever order; it keeps when and by whom it was first revoked, and the most
    # any revoker knew of the certificate.
    shuffled = list(updates)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    state = _fold(list[Entry](shuffled))
    assert set(state) == {("revoked", u.serial) for u in updates}
    for ident, merged in state.items():
        assert isinstance(merged, RevokedEntry)
        mine = [u for u in updates if u.ident == ident]
        assert (merged.hlc, merged.by, merged.reason) == min((u.hlc, u.by, u.reason)
                                                             for u in mine)
        described = [(u.kind, u.tenant, u.name, u.role, u.not_after) for u in mine]
        assert (merged.kind, merged.tenant, merged.name, merged.role,
                merged.not_after) == max(described)
        if any(u.kind for u in mine):
            assert merged.kind  # a bare serial never hides what another revoker knew


def test_revocations_survive_a_reopen_and_answer_by_serial(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    try:
        assert not cat.is_revoked("1f")
        cat.apply([RevokedEntry(serial="1f", hlc=(1 << 64) - 1, by="op", kind="client",
                                tenant="t", name="pacs", role="writer", not_after=123)])
        assert cat.is_revoked("1f") and not cat.is_revoked("1")
    finally:
        cat.close()
    cat = Catalog(tmp_path / "c.sqlite")
    try:
        assert cat.is_revoked("1f")
        assert [r.name for r in cat.revoked("t")] == ["pacs"] and cat.revoked("u") == []
        assert cat.revoked()[0].hlc == (1 << 64) - 1  # full unsigned range round-trips
    finally:
        cat.close()


@pytest.mark.parametrize("doc", [
    {"kind": "revoked", "serial": "0f", "hlc": 1, "by": "x", "reason": "", "cert_kind": "",
     "tenant": "", "name": "", "role": "", "not_after": 0},  # leading zero: not canonical
    {"kind": "revoked", "serial": "1F", "hlc": 1, "by": "x", "reason": "", "cert_kind": "",
     "tenant": "", "name": "", "role": "", "not_after": 0},
    {"kind": "revoked", "serial": "1f", "hlc": 1, "by": "x", "reason": "", "cert_kind": "ca",
     "tenant": "", "name": "", "role": "", "not_after": 0},
    {"kind": "revoked", "serial": "1f", "hlc": 1, "by": "", "reason": "", "cert_kind": "",
     "tenant": "", "name": "", "role": "", "not_after": 0},
])
def test_malformed_revocations_are_refused(doc: object) -> None:
    with pytest.raises(IntegrityError):
        entry_from_wire(doc)
