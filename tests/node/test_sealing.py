"""The store's sealing on a node: the tenancy's own name seals, once the node is built."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from hdsd.catalog import Keyring, TenantEntry, create_master_key, load_master_key
from hdsd.cluster import HybridClock
from hdsd.node import load_node_config, serve_node
from hdsd.node._sealing import NodeSealing
from hdsd.node._tenancy import Tenancy
from tests.helpers.cluster import init_cluster


def test_an_unbound_sealing_seals_nothing() -> None:
    # The store opens and recovers before the tenancy exists: no tenant has a seal yet.
    assert NodeSealing().seal_for("default") is None


async def test_the_store_and_the_tenancy_share_a_tenant_s_name_seal(tmp_path: Path) -> None:
    # One seal per tenant on the node: the ids of a put's names, asked for by the tenancy's
    # hold check, the store and the audit record, are computed by one seal and kept once.
    init_cluster(tmp_path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node = await nursery.start(serve_node,
                                       load_node_config(tmp_path / "dc1-n1" / "node.toml"))
            seal = node.store.sealing.seal_for("default")
            assert seal is not None
            assert seal is node.tenancy.name_seal("default")
            assert node.store.sealing.seal_for("nobody") is None
            nursery.cancel_scope.cancel()


def test_a_tenant_s_name_seal_is_kept_until_its_keys_change(tmp_path: Path) -> None:
    # Tenancy.name_seal serves the seal made from the tenant's cached keys without looking
    # them up again; a shred (after_apply drops the keys) must still end it at once.
    create_master_key(tmp_path / "m.key")
    master = load_master_key(tmp_path / "m.key")
    t = Tenancy(tmp_path, master, Keyring(tmp_path / "keyring.hdsd", master), HybridClock(),
                operator_tenant="ops", evict=lambda _: None)
    try:
        t.after_apply(t.catalog.apply([replace(e, state="confirmed")
                                       for e in t.create_tenant("t", 0)
                                       if isinstance(e, TenantEntry)]))
        seal = t.name_seal("t")
        assert seal is not None and seal.keys is t.keys("t")
        assert t.name_seal("t") is seal
        t.after_apply(t.catalog.apply(t.shred_tenant("t")))
        assert t.name_seal("t") is None
        assert t.name_seal("nobody") is None
    finally:
        t.close()
