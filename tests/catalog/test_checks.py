"""The write checks on their own, with a fake clock: retention expires, holds and quotas."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hdsd import LegalHold, PermissionDenied, QuotaExceeded, RetentionLocked, TenantShredded
from hdsd.catalog import Keyring, TenantEntry, create_master_key, load_master_key
from hdsd.cluster import HybridClock
from hdsd.node._tenancy import Tenancy
from hdsd.store import Version

DAY_MS = 86_400_000
T0 = 1_800_000_000_000  # wall ms when the object was written


class _FakeNode:
    def __init__(self, current: Version | None) -> None:
        self.current = current
        self.store = SimpleNamespace(tenant_usage=lambda: {"t": 900}, generation=1)
        self.reads = self  # the node's read paths (node.reads.versions_of)

    async def versions_of(self, tenant: str, bucket: str, key: str) -> list[Version]:
        return [self.current] if self.current else []


@pytest.fixture
def tenancy(tmp_path: Path) -> Any:
    create_master_key(tmp_path / "m.key")
    master = load_master_key(tmp_path / "m.key")
    now = {"ms": T0}
    clock = HybridClock(wall_ms=lambda: now["ms"])
    t = Tenancy(tmp_path, master, Keyring(tmp_path / "keyring.hdsd", master), clock,
                operator_tenant="ops", evict=lambda _: None, wall_ms=lambda: now["ms"])
    # Confirmed as if every node had voted for it (the vote itself: test_confirm.py).
    t.catalog.apply([replace(e, state="confirmed") for e in t.create_tenant("t", 1000)
                     if isinstance(e, TenantEntry)])
    yield t, now, clock
    t.close()


def _version(clock: HybridClock, size: int = 100) -> Version:
    return Version(tenant="t", bucket="b", key="k", hlc=clock.now(), node="n", size=size,
                   content_hash=b"h")


async def test_retention_locks_until_it_expires(tenancy: Any) -> None:
    t, now, clock = tenancy
    t.catalog.apply(t.create_bucket("t", "b", 10))
    node = _FakeNode(_version(clock))
    for delete in (True, False):
        with pytest.raises(RetentionLocked):
            await t.check_write(node, "t", "b", "k", size=1, delete=delete)
    now["ms"] = T0 + 10 * DAY_MS - 1
    with pytest.raises(RetentionLocked):
        await t.check_write(node, "t", "b", "k", size=None, delete=True)
    now["ms"] = T0 + 10 * DAY_MS
    await t.check_write(node, "t", "b", "k", size=None, delete=True)
    with pytest.raises(RetentionLocked, match="never shortened"):
        t.create_bucket("t", "b", 9)
    await t.check_write(_FakeNode(None), "t", "b", "new-key", size=1, delete=False)


async def test_hold_then_clear(tenancy: Any) -> None:
    t, _, clock = tenancy
    node = _FakeNode(_version(clock))
    t.catalog.apply(t.set_hold("t", "b", "k", True, "admin@t"))
    with pytest.raises(LegalHold):
        await t.check_write(node, "t", "b", "k", size=None, delete=True)
    t.catalog.apply(t.set_hold("t", "b", "k", False, "admin@t"))
    await t.check_write(node, "t", "b", "k", size=None, delete=True)


async def test_quota_counts_overwrites_and_puts_in_flight(tenancy: Any) -> None:
    t, _, clock = tenancy
    node = _FakeNode(_version(clock, size=100))  # usage 900 of 1000
    with pytest.raises(QuotaExceeded):
        await t.check_write(node, "t", "b", "other", size=250, delete=False)
    await t.check_write(node, "t", "b", "k", size=200, delete=False)  # replaces 100 bytes
    async with t.admit_put(node, "t", "b", "k", 150):  # +50 reserved while in flight
        with pytest.raises(QuotaExceeded):
            await t.check_write(node, "t", "b", "k", size=160, delete=False)


async def test_a_put_admitted_without_waiting_decides_as_the_waiting_admission(
        tenancy: Any) -> None:
    """``admit_put_now`` (a small put of a group) answers only what needs no wait: a stale
    usage figure under a quota, a retention to check or a tenant not confirmed are left to
    ``admit_put`` (None); what it reserves counts against the quota until released."""
    t, _, _ = tenancy
    node = _FakeNode(None)
    assert t.admit_put_now("t", "b", "k", 100) is None  # no usage figure yet
    await t.refresh_usage(node, force=True)  # 900 of 1000 used
    assert t.admit_put_now("t", "b", "k", 150) is None  # may not fit: check_write decides
    assert t.admit_put_now("t", "b", "k", 60) == 60
    assert t.admit_put_now("t", "b", "k2", 60) is None  # 900 + 60 reserved + 60 > 1000
    with pytest.raises(QuotaExceeded):
        await t.check_write(node, "t", "b", "k2", size=60, delete=False)
    t.release_put("t", 60, stored=False)
    assert t.admit_put_now("t", "b", "k2", 60) == 60
    t.release_put("t", 60, stored=True)  # counted until the next refresh has seen it
    assert t.usage("t") == 960 and not any(t._reserved.values())
    t.catalog.apply(t.set_hold("t", "b", "held", True, "admin@t"))
    with pytest.raises(LegalHold):
        t.admit_put_now("t", "b", "held", 1)
    t.catalog.apply(t.create_bucket("t", "kept", 10))
    assert t.admit_put_now("t", "kept", "k", 1) is None  # retention: the current version
    t.catalog.apply(t.shred_tenant("t"))
    assert t.admit_put_now("t", "b", "k", 1) is None  # refused by admit_put (TenantShredded)
    assert t.admit_put_now("nobody", "b", "k", 1) is None


async def test_shredded_and_unknown_tenants_and_admin_scope(tenancy: Any) -> None:
    t, _, _ = tenancy
    with pytest.raises(PermissionDenied):
        t.keys("nobody")
    t.catalog.apply(t.shred_tenant("t"))
    with pytest.raises(TenantShredded):
        t.keys("t")
    with pytest.raises(TenantShredded):
        t.create_tenant("t", 0)  # a shredded name is never reused
    with pytest.raises(PermissionDenied):
        t.check_admin_of("t", "writer", "t")
    with pytest.raises(PermissionDenied):
        t.check_admin_of("u", "admin", "t")
    t.check_admin_of("ops", "admin", "t")


async def test_a_costly_usage_snapshot_is_taken_less_often_but_never_refuses_stale(
        tenancy: Any, monkeypatch: Any) -> None:
    import time

    import trio

    import hdsd.node._tenancy as tenancy_module

    t, _, _ = tenancy
    node = _FakeNode(None)
    scans = {"n": 0, "used": 900}

    def slow_usage() -> dict[str, int]:  # a big store: the snapshot reads every version
        scans["n"] += 1
        time.sleep(0.05)
        return {"t": scans["used"]}
    node.store = SimpleNamespace(tenant_usage=slow_usage, generation=1)
    monkeypatch.setattr(tenancy_module, "_USAGE_TTL_S", 0.01)
    monkeypatch.setattr(tenancy_module, "_USAGE_COST_RATIO", 2000.0)  # reused for ~100 s
    await t.check_write(node, "t", "b", "k1", size=10, delete=False)
    for _ in range(5):
        await t.check_write(node, "t", "b", "k1", size=10, delete=False)
    assert scans["n"] == 1
    # Deletes elsewhere freed room the old snapshot does not know: a put it would refuse
    # refreshes it first (when older than the base TTL) and goes through.
    scans["used"] = 100
    node.store.generation += 1
    await trio.sleep(0.02)
    assert await t.check_write(node, "t", "b", "k2", size=500, delete=False) == 500
    assert scans["n"] == 2
    # Filled elsewhere: seen once the snapshot's own TTL has passed, then refused.
    scans["used"] = 990
    node.store.generation += 1
    assert await t.check_write(node, "t", "b", "k3", size=5, delete=False) == 5  # stale: room
    t._usage_at -= 1000.0  # the TTL passes
    with pytest.raises(QuotaExceeded):
        await t.check_write(node, "t", "b", "k3", size=500, delete=False)
    assert scans["n"] == 3
