"""Backup nodes: placement by plan (standard keys never reach a backup node, backup-plan keys
live on backup nodes only), the layout id, and the callers that must follow the plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from hdsd.cluster import Layout, NodeInfo, placement_key
from hdsd.repair import PeerTrees
from hdsd.replication import Replicator
from hdsd.store import Store
from tests.helpers.sealing import SEALING


def _layout(storage: int, backup: int, replicas: int = 1) -> Layout:
    nodes = [NodeInfo(f"{s}-n{i}", s, "127.0.0.1", 1) for s in ("a", "b")
             for i in range(storage)]
    nodes += [NodeInfo(f"{s}-b{i}", s, "127.0.0.1", 1, role="backup") for s in ("a", "b")
              for i in range(backup)]
    return Layout(sites=("a", "b"), nodes=tuple(nodes), replicas_per_site=replicas)


keys = st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8),
                 st.text(min_size=1, max_size=16))


@given(keys, st.integers(1, 3), st.integers(1, 3), st.integers(1, 2))
def test_placement_follows_the_plan(key: tuple[str, str, str], storage: int, backup: int,
                                    replicas: int) -> None:
    layout = _layout(max(storage, replicas), backup, replicas)
    pkey = placement_key(*key)
    standard = layout.replicas(pkey)
    backed = layout.replicas(pkey, "backup")
    for site in layout.sites:
        assert len(standard[site]) == replicas
        assert all(n.role == "storage" for n in standard[site])
        assert len(backed[site]) == min(replicas, backup)
        assert all(n.role == "backup" and n.site == site for n in backed[site])


def test_a_site_without_backup_nodes_holds_no_backup_key() -> None:
    nodes = (NodeInfo("a-n0", "a", "h", 1), NodeInfo("b-n0", "b", "h", 2),
             NodeInfo("a-b0", "a", "h", 3, role="backup"))
    layout = Layout(sites=("a", "b"), nodes=nodes)
    assert layout.sites_without_backup() == ["b"]
    placed = layout.replicas(b"k", "backup")
    assert [n.name for n in placed["a"]] == ["a-b0"] and placed["b"] == []


def test_backup_nodes_are_extra_and_roles_are_checked() -> None:
    with pytest.raises(ValueError, match="storage node"):
        Layout(sites=("a", "b"), nodes=(NodeInfo("a-b0", "a", "h", 1, role="backup"),
                                        NodeInfo("b-n0", "b", "h", 2)))
    with pytest.raises(ValueError, match="role"):
        Layout(sites=("a", "b"), nodes=(NodeInfo("a-n0", "a", "h", 1, role="archive"),
                                        NodeInfo("b-n0", "b", "h", 2)))
    with pytest.raises(ValueError, match="plan"):
        _layout(1, 1).replicas(b"k", "gold")


def test_the_layout_id_covers_roles() -> None:
    plain = _layout(1, 0)
    with_backup = _layout(1, 1)
    flipped = Layout(sites=("a", "b"), nodes=tuple(
        NodeInfo(n.name, n.site, n.host, n.port, n.weight,
                 role="storage" if n.name == "a-b0" else n.role)
        for n in with_backup.nodes))
    assert len({plain.layout_id, with_backup.layout_id, flipped.layout_id}) == 3
    # An all-storage layout keeps the id it had before roles existed (xxh3 of the same text).
    assert plain.layout_id == Layout(sites=("a", "b"), nodes=plain.nodes).layout_id
    h = xxhash.xxh3_64()
    h.update(b"r=1;")
    for n in sorted(plain.nodes, key=lambda n: n.name):
        h.update(f"{n.name}@{n.site}*{n.weight};".encode())
    assert plain.layout_id == h.hexdigest()


def _replicator(layout: Layout, plans: dict[str, str]) -> Replicator:
    # Placement only: no store, peers or hints are touched by replicas_for.
    return Replicator(name="a-n0", site="a", layout=layout, store=None,  # type: ignore[arg-type]
                      peers=None, hints=None, mode=None,  # type: ignore[arg-type]
                      policy="each-site", on_peer_site_loss="refuse", timeout=1.0,
                      plan_of=lambda t: plans.get(t, "standard"))


@pytest.mark.parametrize("backup", [1, 2])
def test_replicas_for_asks_the_plan(backup: int) -> None:
    layout = _layout(2, backup, replicas=1)
    rep = _replicator(layout, {"vault": "backup"})
    for i in range(50):
        standard = rep.replicas_for("chu", "b", f"k{i}")
        backed = rep.replicas_for("vault", "b", f"k{i}")
        assert all("-n" in n for nodes in standard.values() for n in nodes)
        assert all("-b" in n for nodes in backed.values() for n in nodes)
        assert [len(v) for v in backed.values()] == [1, 1]
        assert backed == {s: [n.name for n in ns] for s, ns in layout.replicas(
            placement_key("vault", "b", f"k{i}"), "backup").items()}


async def test_trees_compare_the_pairs_the_plan_places(tmp_path: Path) -> None:
    layout = _layout(1, 1)
    plans = {"vault": "backup"}
    store = Store.open(tmp_path / "s", segment_bytes=1 << 20, sealing=SEALING)
    try:
        def trees(name: str) -> PeerTrees:
            return PeerTrees(store, layout, name, tmp_path / f"{name}.bin",
                             lambda t: plans.get(t, "standard"))
        storage, backup = trees("a-n0"), trees("a-b0")
        assert storage.sharing("chu", "b", "k") == ["b-n0"]
        assert storage.sharing("vault", "b", "k") == []  # a storage node holds none of it
        assert backup.sharing("vault", "b", "k") == ["b-b0"]
        assert backup.sharing("chu", "b", "k") == []
    finally:
        store.close()
