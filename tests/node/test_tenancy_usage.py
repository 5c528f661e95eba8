"""The quota usage snapshot against a real store: read again only when the store changed (a
write, a replicated or repaired copy, a purge, keys forgotten) or a put done here still counts
on top of it — never on a timer alone — and a quota still holds across snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hdsd import QuotaExceeded
from hdsd.catalog import Keyring, TenantEntry, create_master_key, load_master_key
from hdsd.cluster import HybridClock
from hdsd.node._tenancy import Tenancy
from hdsd.store import Store, Version
from tests.helpers.sealing import SEALING
from tests.store._util import inline_version

QUOTA = 1000


class _CountingStore:
    """The real store, its usage scans counted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.scans = 0

    @property
    def generation(self) -> int:
        return self.store.generation

    def tenant_usage(self) -> dict[str, int]:
        self.scans += 1
        return self.store.tenant_usage()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Tenancy, Store, Any]]:
    create_master_key(tmp_path / "m.key")
    master = load_master_key(tmp_path / "m.key")
    t = Tenancy(tmp_path, master, Keyring(tmp_path / "keyring.hdsd", master), HybridClock(),
                operator_tenant="ops", evict=lambda _: None)
    t.catalog.apply([replace(e, state="confirmed") for e in t.create_tenant("t", QUOTA)
                     if isinstance(e, TenantEntry)])

    async def versions_of(tenant: str, bucket: str, key: str) -> list[Version]:
        return []  # no overwrite frees anything here

    with Store.open(tmp_path / "store", sealing=SEALING) as store:
        node = SimpleNamespace(store=_CountingStore(store),
                               reads=SimpleNamespace(versions_of=versions_of))
        yield t, store, node
    t.close()


def _put(store: Store, key: str, size: int, hlc: int) -> Version:
    v = inline_version("t", "b", key, hlc, "n", bytes(size))
    store.commit_sync([v])
    store.current("t", "b", key)  # a read after the acknowledgement waits for its index
    return v


async def test_usage_is_read_again_only_when_the_store_changed(setup: Any) -> None:
    t, store, node = setup
    first = _put(store, "a", 300, 1)
    await t.refresh_usage(node, force=True)
    assert (node.store.scans, t.usage("t")) == (1, 300)
    for _ in range(3):  # nothing written: the snapshot is still exact, not read again
        await t.refresh_usage(node, force=True)
        await t.refresh_usage(node, max_age=0)
    assert node.store.scans == 1

    _put(store, "b", 200, 2)  # a write
    await t.refresh_usage(node, force=True)
    assert (node.store.scans, t.usage("t")) == (2, 500)

    # A repaired or replicated copy takes the writer's other door (encoded off the loop).
    await store.start_encoded(store.encode_commit(
        [inline_version("t", "b", "c", 3, "peer", bytes(100))])).wait()
    await t.refresh_usage(node, force=True)
    assert (node.store.scans, t.usage("t")) == (3, 600)

    store.commit_sync([Version("t", "b", "a", 4, "n", size=0, content_hash=b"",
                               purges=(first.hlc, first.node))])  # a purge
    await t.refresh_usage(node, force=True)
    assert (node.store.scans, t.usage("t")) == (4, 300)

    store.forget_keys([("t", "b", "b")])  # moved to other nodes by a layout change
    await t.refresh_usage(node, force=True)
    assert (node.store.scans, t.usage("t")) == (5, 100)
    await t.refresh_usage(node, force=True)
    assert node.store.scans == 5


async def test_a_quota_holds_across_a_snapshot_that_was_not_retaken(setup: Any) -> None:
    t, store, node = setup
    _put(store, "a", 900, 1)
    await t.check_write(node, "t", "b", "n1", size=50, delete=False)  # 900 + 50: room
    await t.refresh_usage(node, max_age=0)  # unchanged: kept as is
    assert node.store.scans == 1
    _put(store, "b", 80, 2)  # written through another node of the site, or replicated
    # The figure the node holds is fresh (marked so above) but the store moved: the next
    # refresh (the TTL passed) reads it, and the put no longer fits.
    await t.refresh_usage(node, max_age=0)
    assert node.store.scans == 2
    with pytest.raises(QuotaExceeded):
        await t.check_write(node, "t", "b", "n1", size=50, delete=False)


async def test_a_put_counted_twice_is_settled_by_the_next_snapshot(setup: Any) -> None:
    """A put done here is indexed before the snapshot reads the store but released (counted
    in ``_recent``) after it: it counts twice until a snapshot taken after its release. Such
    a snapshot must be taken even though the store has not changed since."""
    t, store, node = setup
    async with t.admit_put(node, "t", "b", "k", 400):
        _put(store, "k", 400, 1)
        await t.refresh_usage(node, force=True)  # reads the put already
    assert t.usage("t") == 800  # the snapshot and the put both count it
    await t.refresh_usage(node, max_age=0)
    assert (node.store.scans, t.usage("t")) == (3, 400)
    await t.refresh_usage(node, max_age=0)
    assert node.store.scans == 3
