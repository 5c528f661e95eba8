"""The store's sealing on a node: the tenancy's own name seals, once the node is built."""

from __future__ import annotations

from pathlib import Path

import trio

from hdsd.node import load_node_config, serve_node
from hdsd.node._sealing import NodeSealing
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
