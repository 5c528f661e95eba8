"""The read side's placement shortcut: ``Replicator.sole_replica_here`` says what
``replicas_for(...)[site] == [this node]`` says, for every layout and plan, and follows a
layout change made live (``set_record``: a node joining, a migration, its end)."""

from __future__ import annotations

from typing import Any

import pytest

from hdsd.cluster import Layout, LayoutRecord, NodeInfo
from hdsd.replication import Replicator


class _Hints:
    def targets(self) -> list[str]:
        return []


class _Doubts:
    def add_peers(self, names: Any) -> None:
        pass


def _layout(storage: int, backup: int = 0, replicas: int = 1) -> Layout:
    nodes = [NodeInfo(f"{s}-n{i}", s, "127.0.0.1", 1) for s in ("a", "b")
             for i in range(storage)]
    nodes += [NodeInfo(f"{s}-b{i}", s, "127.0.0.1", 1, role="backup") for s in ("a", "b")
              for i in range(backup)]
    return Layout(sites=("a", "b"), nodes=tuple(nodes), replicas_per_site=replicas)


def _replicator(layout: Layout, name: str = "a-n0") -> Replicator:
    plans = {"vault": "backup"}
    # Placement only: no store or peers are touched by replicas_for or set_record.
    return Replicator(name=name, site="a", layout=layout, store=None,  # type: ignore[arg-type]
                      peers=None, hints=_Hints(), mode=None,  # type: ignore[arg-type]
                      policy="each-site", on_peer_site_loss="refuse", timeout=1.0,
                      plan_of=lambda t: plans.get(t, "standard"),
                      doubts=_Doubts())  # type: ignore[arg-type]


def _agrees(rep: Replicator) -> tuple[int, int]:
    """(keys this node is sole for, keys it is not), after checking every answer against
    the placement itself."""
    sole = other = 0
    for tenant in ("chu", "vault"):
        for i in range(60):
            key = f"k{i}"
            expected = rep.replicas_for(tenant, "b", key).get("a", []) == [rep.name]
            assert rep.sole_replica_here(tenant, "b", key) is expected, (tenant, key)
            sole, other = (sole + 1, other) if expected else (sole, other + 1)
    return sole, other


@pytest.mark.parametrize(("storage", "backup", "replicas", "name"), [
    (1, 0, 1, "a-n0"),  # the usual 1+1: every standard key
    (1, 1, 1, "a-n0"),
    (1, 1, 1, "a-b0"),  # a backup node: every backup key, no standard one
    (2, 0, 1, "a-n0"),  # placement by key
    (2, 0, 2, "a-n0"),  # two copies here: never the only one
    (3, 2, 1, "a-b1"),
])
def test_sole_replica_here_is_what_the_placement_says(storage: int, backup: int,
                                                       replicas: int, name: str) -> None:
    _agrees(_replicator(_layout(storage, backup, replicas), name))


def test_sole_replica_here_follows_a_layout_change() -> None:
    one = _layout(1)
    rep = _replicator(one)
    # 1+1: every key (and no backup-plan key: there is no backup node).
    assert _agrees(rep) == (60, 60)
    two = _layout(2)
    rep.set_record(LayoutRecord(cluster_id="c", version=1, layout=two, previous=one,
                                phase="migrating"))
    # While migrating, keys live on the union of both placements: a key moving to a-n1 has
    # two replicas here, so this node is no longer its only one.
    sole, _ = _agrees(rep)
    assert 0 < sole < 60
    rep.set_record(LayoutRecord(cluster_id="c", version=2, layout=two))
    sole_after, _ = _agrees(rep)
    assert 0 < sole_after < 60
    rep.set_record(LayoutRecord(cluster_id="c", version=3, layout=one))
    assert _agrees(rep) == (60, 60)
