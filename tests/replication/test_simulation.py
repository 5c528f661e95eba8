"""Deterministic simulation: whole clusters in one process on a mock clock, with hypothesis
generating fault schedules (cuts in one or both directions, loss, delays, crashes that lose
unsynced writes, fsync failures, operator degrades).

After every schedule: an acknowledged version is never lost; under each-site nothing is
acknowledged before a replica in each site fsynced it; after healing and hint replay every
replica of a key holds every version its coordinator kept. A failing schedule is printed by
hypothesis with its seed and replays identically.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from hdsd import HdsdError
from hdsd.store import ChunkRecord, Version

from .sim import SimNet, SimNode, make_layout

KEYS = [f"k{i}" for i in range(6)]
# More schedules for a soak: SIM_SCALE=20 pytest tests/replication
_SCALE = int(os.environ.get("SIM_SCALE", "1"))


def _steps(n_nodes: int) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    node = st.integers(0, n_nodes - 1)
    return st.lists(st.one_of(
        st.tuples(st.just("put"), node, st.sampled_from(KEYS), st.booleans()),
        st.tuples(st.just("put"), node, st.sampled_from(KEYS), st.booleans()),
        st.tuples(st.just("cut"), node, node, st.booleans()),
        st.tuples(st.just("heal")),
        st.tuples(st.just("lossy"), st.floats(0.0, 0.5)),
        st.tuples(st.just("crash"), node),
        st.tuples(st.just("restart"), node),
        st.tuples(st.just("fail_fsync"), node),
        st.tuples(st.just("degrade"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("sleep"), st.floats(0.0, 3.0)),
    ), max_size=40)


class Run:
    def __init__(self, net: SimNet) -> None:
        self.net = net
        self.acked: list[Version] = []
        # Puts whose coordinator finished with them (acked or refused), i.e. not cut short by
        # its crash: a version kept by a coordinator that crashed between its own fsync and
        # the hint is left for anti-entropy, which is out of the write path's reach.
        self.settled: list[Version] = []
        self.violations: list[str] = []
        self.counter = 0

    async def put(self, node: SimNode, key: str, chunked: bool) -> None:
        rep = node.replicator
        assert rep is not None
        self.counter += 1
        value = f"{node.name}:{key}:{self.counter}".encode()
        cid = hashlib.blake2b(value, digest_size=32).digest()
        version = Version(tenant="t", bucket="b", key=key, hlc=node.clock.now(), node=node.name,
                          size=len(value), content_hash=cid, chunks=(cid,),
                          inline=None if chunked else value)
        replicas = rep.replicas_for("t", "b", key)
        strict = rep.effective_policy() == "each-site"
        try:
            lagging: set[str] = set()
            if chunked:
                lagging |= await rep.write(replicas, [ChunkRecord("t", cid, value)], [])
            lagging |= await rep.write(replicas, [], [version])
            await rep.keep_hints(lagging, [version])
        except HdsdError:
            self.settled.append(version)
            return
        self.settled.append(version)
        if strict and rep.effective_policy() == "each-site":
            for site, names in replicas.items():
                if not self._site_holds(names, version):
                    self.violations.append(f"{version.version_id} acked under each-site "
                                           f"before any replica in {site} had it")
        self.acked.append(version)

    def _site_holds(self, names: list[str], v: Version) -> bool:
        """Durable in this site: the version on some replica, each chunk on some replica
        (each write meets the policy on its own; replay then completes every replica)."""
        stores = [self.net.nodes[n].store for n in names]
        if not any((v.tenant, v.bucket, v.key, v.hlc, v.node) in s.versions for s in stores):
            return False
        return v.inline is not None or all(any((v.tenant, c) in s.chunks for s in stores)
                                           for c in v.chunks)

    def _holds(self, name: str, v: Version) -> bool:
        store = self.net.nodes[name].store
        if (v.tenant, v.bucket, v.key, v.hlc, v.node) not in store.versions:
            return False
        return v.inline is not None or all((v.tenant, c) in store.chunks for c in v.chunks)


async def _simulate(steps: list[tuple[Any, ...]], seed: int, nodes_per_site: int,
                    replicas_per_site: int, workdir: Path) -> Run:
    net = SimNet(make_layout(nodes_per_site, replicas_per_site), workdir, random.Random(seed))
    names = list(net.nodes)
    run = Run(net)
    async with trio.open_nursery() as root:
        for node in net.nodes.values():
            await node.start(root)
        for step in steps:
            kind = step[0]
            if kind == "put":
                node = net.nodes[names[step[1]]]
                if node.alive and node.requests is not None:
                    node.requests.start_soon(run.put, node, step[2], step[3])
            elif kind == "cut":
                a, b = names[step[1]], names[step[2]]
                net.cut.add((a, b))
                if step[3]:
                    net.cut.add((b, a))
            elif kind == "heal":
                net.heal()
            elif kind == "lossy":
                net.drop = step[1]
            elif kind == "crash":
                net.nodes[names[step[1]]].crash()
            elif kind == "restart":
                node = net.nodes[names[step[1]]]
                if not node.alive:
                    await node.start(root)
            elif kind == "fail_fsync":
                net.nodes[names[step[1]]].store.fail_next_fsync = True
            elif kind == "degrade":
                for node in net.nodes.values():
                    if node.info.site == step[1]:
                        node.mode.set("degraded", reason="simulated maintenance", by="sim")
            elif kind == "sleep":
                await trio.sleep(step[1])
            await trio.sleep(0.001)
        # Heal everything, restart every node (recovery clears a fail-stopped store), and
        # give hint replay plenty of (mock) time.
        await trio.sleep(net.timeout * 2)
        net.heal()
        for node in net.nodes.values():
            node.store.fail_next_fsync = False  # the operator replaced the faulty disk
            if node.alive and node.store.failed:
                node.crash()
            if not node.alive:
                await node.start(root)
        await trio.sleep(60)
        root.cancel_scope.cancel()
    return run


def _check(run: Run) -> None:
    assert not run.violations, run.violations
    net = run.net
    for v in run.acked:
        rep = next(iter(net.nodes.values())).replicator
        assert rep is not None
        for site, names in rep.replicas_for(v.tenant, v.bucket, v.key).items():
            for name in names:
                assert run._holds(name, v), f"acked {v.version_id} missing on {name} ({site})"
    # Every version a coordinator kept reached every replica of its key: sites converged.
    for v in run.settled:
        node = net.nodes[v.node]
        rep = node.replicator
        assert rep is not None
        if run._holds(node.name, v):
            for names in rep.replicas_for(v.tenant, v.bucket, v.key).values():
                for name in names:
                    assert run._holds(name, v), f"{v.version_id} kept by {node.name} " \
                                                f"never reached {name}"
    for node in net.nodes.values():
        assert node.hints.backlog().versions == 0, (node.name, node.hints.backlog())


def _run_sim(steps: list[tuple[Any, ...]], seed: int, nodes_per_site: int,
             replicas_per_site: int) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        clock = trio.testing.MockClock(autojump_threshold=0)
        run: Run = trio.run(_simulate, steps, seed, nodes_per_site, replicas_per_site,
                            Path(tmp), clock=clock)
        try:
            _check(run)
        finally:
            for node in run.net.nodes.values():
                node.hints.close()
        return run


@settings(max_examples=25 * _SCALE)
@given(_steps(2), st.integers(0, 2**32 - 1))
def test_two_sites_one_node_each(steps: list[tuple[Any, ...]], seed: int) -> None:
    _run_sim(steps, seed, 1, 1)


@settings(max_examples=15 * _SCALE)
@given(_steps(4), st.integers(0, 2**32 - 1), st.sampled_from([1, 2]))
def test_two_sites_two_nodes_each(steps: list[tuple[Any, ...]], seed: int, replicas: int) -> None:
    _run_sim(steps, seed, 2, replicas)


def test_partition_with_degraded_sites_keeps_both_writes() -> None:
    steps: list[tuple[Any, ...]] = [
        ("cut", 0, 1, True), ("degrade", "a"), ("degrade", "b"),
        ("put", 0, "k0", False), ("put", 1, "k0", True), ("sleep", 1.0), ("heal",),
    ]
    run = _run_sim(steps, 1, 1, 1)
    assert len(run.acked) == 2  # both sides accepted a write during the partition...
    for node in run.net.nodes.values():  # ...and both versions survive everywhere
        assert len(node.store.of_key("t", "b", "k0")) == 2


def test_each_site_refuses_while_partitioned() -> None:
    run = _run_sim([("cut", 0, 1, True), ("put", 0, "k1", False), ("sleep", 5.0)], 7, 1, 1)
    assert run.acked == []
