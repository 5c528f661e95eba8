"""A layout change in the deterministic simulation: a node joins site a while puts go on, one
node learns the change late (it still writes under the old layout), the new replica is cut off
for a while. The real Replicator decides every acknowledgement; after the phases (migrating,
syncing with reconciliation rounds, stable):

* no put is acknowledged unless the policy held in *each* layout (a replica of each site under
  the old placement and under the new one had it);
* a put whose new replica is unreachable is refused, not acknowledged on the old layout alone;
* once stable, every acknowledged version is on every replica the new layout names.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import trio
import trio.testing

from hdsd import HdsdError
from hdsd.cluster import Layout, LayoutRecord, NodeInfo, placement_key, with_node

from .sim import SimNet
from .test_simulation import Run

OLD = Layout(sites=("a", "b"), nodes=(NodeInfo("a-n1", "a", "127.0.0.1", 1),
                                      NodeInfo("b-n1", "b", "127.0.0.1", 2)))
NEW = with_node(OLD, NodeInfo("a-n2", "a", "127.0.0.1", 3))
KEYS = [f"k{i}" for i in range(12)]


def _moves(key: str) -> bool:
    return NEW.replicas(placement_key("t", "b", key))["a"][0].name == "a-n2"


def test_writes_during_a_layout_change_meet_the_policy_in_both_layouts() -> None:
    assert any(_moves(k) for k in KEYS) and not all(_moves(k) for k in KEYS)
    with tempfile.TemporaryDirectory() as tmp:
        net = SimNet(NEW, Path(tmp), random.Random(5))
        run = Run(net)
        nodes = net.nodes
        old = LayoutRecord("c", 1, OLD)
        migrating = old.changed_to(NEW, "add a-n2")
        syncing = migrating.next_phase()
        stable = syncing.next_phase() if syncing else None
        assert syncing is not None and stable is not None
        refused: list[str] = []

        async def put(node: str, key: str) -> None:
            try:
                await run._attempt(nodes[node], *run._new_version(nodes[node], key, True,
                                                                  key.encode()),
                                   True, retried=False)
                rep = nodes[node].replicator
                assert rep is not None
                acked = run.acked[-1]
                placed = rep.replicas_for("t", "b", key)
                for part in getattr(placed, "parts", ()):
                    for site, names in part.items():
                        if not run._site_holds(list(names), acked):
                            run.violations.append(f"{key} acked without {site} of a layout")
            except HdsdError as exc:
                refused.append(f"{node} {key}: {exc.code}")

        def adopt(names: list[str], record: LayoutRecord) -> None:
            for name in names:
                rep = nodes[name].replicator
                assert rep is not None
                rep.set_record(record)
                nodes[name].doubts.doubt(None, f"layout {record.version}")

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for node in nodes.values():
                    await node.start(nursery)
                adopt(list(nodes), old)
                for key in KEYS[:6]:
                    await put("a-n1", key)
                # a-n1 and a-n2 run the change; b-n1 has not heard of it yet
                adopt(["a-n1", "a-n2"], migrating)
                for key in KEYS[6:9]:
                    await put("a-n1", key)
                    await put("b-n1", key + "-late")
                # the new replica cut off: puts of keys it now holds must be refused
                net.cut |= {("a-n1", "a-n2"), ("a-n2", "a-n1"), ("b-n1", "a-n2")}
                for key in KEYS[9:]:
                    await put("a-n1", key)
                net.heal()
                adopt(["b-n1"], migrating)
                await trio.sleep(5)
                adopt(list(nodes), syncing)
                with trio.fail_after(120):
                    while any(n.doubts.pending() or n.hints.backlog().versions
                              for n in nodes.values()):
                        await trio.sleep(1)
                adopt(list(nodes), stable)
                await trio.sleep(5)
                nursery.cancel_scope.cancel()

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert run.violations == []
        cut_keys = [k for k in KEYS[9:] if _moves(k)]
        assert sorted(r.split()[1].rstrip(":") for r in refused) == sorted(cut_keys), refused
        rep = nodes["a-n1"].replicator
        assert rep is not None
        for v in run.acked:
            for names in rep.replicas_for(v.tenant, v.bucket, v.key).values():
                for name in names:
                    assert run._holds(name, v), (v.key, name)
