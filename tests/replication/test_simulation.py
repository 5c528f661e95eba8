"""Deterministic simulation: whole clusters in one process on a mock clock, with hypothesis
generating fault schedules (cuts in one or both directions, loss, delays, crashes that lose
unsynced writes, fsync failures, operator degrades) and clients that retry a refused put with
the same request id (at the same coordinator or another one), reuse a request id for another
key, and write through coordinators that are not replicas of the key.

After every schedule:
* no acknowledgement — first attempt or retry — before the policy held for *that* version
  (under each-site: a replica in each site had it);
* a request id reused for another request is refused (when the coordinator can see the first
  use) and writes nothing;
* an acknowledged version is never lost;
* once healed, every node's live RPO reaches 0 (no hints, no peer in doubt), and then every
  version stored anywhere is on every replica its placement names.
A failing schedule is printed by hypothesis with its seed and replays identically.
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
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hdsd import HdsdError, RequestIdConflict
from hdsd.replication import check_retry
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
        st.tuples(st.just("retry"), node, node, st.sampled_from(KEYS), st.booleans(),
                  st.floats(0.0, 4.0)),
        st.tuples(st.just("reuse"), node, st.sampled_from(KEYS)),
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
        self.violations: list[str] = []
        self.counter = 0
        self.request_ids: list[bytes] = []  # of puts that reached a coordinator
        self.retried_acks = 0
        self.conflicts = 0
        self.refusals: list[str] = []
        self.in_flight = 0
        self.rpo_zero_seen = 0

    def _new_version(self, node: SimNode, key: str, chunked: bool,
                     rid: bytes) -> tuple[Version, bytes]:
        self.counter += 1
        value = f"{key}:{self.counter}".encode()
        cid = hashlib.blake2b(value, digest_size=32).digest()
        version = Version(tenant="t", bucket="b", key=key, hlc=node.clock.now(), node=node.name,
                          size=len(value), content_hash=cid, chunks=(cid,),
                          inline=None if chunked else value, request_id=rid)
        return version, value

    async def put(self, node: SimNode, key: str, chunked: bool,
                  retry_at: SimNode | None = None, retry_after: float = 0.0) -> None:
        """A client's put with a request id; on a refusal, one retry with the same id (at
        *retry_at*, the same node or another one, *retry_after* seconds later), as the
        clients do."""
        self.in_flight += 1
        try:
            rid = self.counter.to_bytes(8, "big") + node.name.encode()[:8].ljust(8, b".")
            self.request_ids.append(rid)
            version, value = self._new_version(node, key, chunked, rid)
            for attempt, coordinator in enumerate([node, retry_at] if retry_at else [node]):
                if attempt:
                    await trio.sleep(retry_after)
                if not coordinator.alive:
                    return
                try:
                    await self._attempt(coordinator, version, value, chunked,
                                        retried=attempt > 0)
                    return
                except HdsdError as exc:
                    self.refusals.append(exc.code)
                    continue
        finally:
            self.in_flight -= 1

    async def _attempt(self, node: SimNode, version: Version, value: bytes, chunked: bool, *,
                       retried: bool) -> None:
        """What the node's put handler does with one attempt (the network part is the real
        Replicator; the request-id rules are the real ``check_retry``)."""
        rep = node.replicator
        assert rep is not None
        replicas = rep.replicas_for(version.tenant, version.bucket, version.key)
        strict = rep.effective_policy() == "each-site"
        previous = node.store.find_request(version.tenant, version.request_id)
        if previous is not None:
            check_retry(previous, bucket=version.bucket, key=version.key, delete=False,
                        size=version.size, content_hash=version.content_hash)
            lagging = await rep.settle(replicas, previous)
            await rep.keep_hints(lagging, [previous])
            acked = previous
            self.retried_acks += 1
        else:
            if retried:  # a fresh stamp, as a new attempt at another node would get
                version = Version(**{**_fields(version), "hlc": node.clock.now(),
                                     "node": node.name})
            lagging = set()
            if chunked:
                lagging |= await rep.write(replicas, [ChunkRecord("t", version.chunks[0],
                                                                  value)], [])
            lagging |= await rep.write(replicas, [], [version], missed=frozenset(lagging))
            await rep.keep_hints(lagging, [version])
            acked = version
        if strict and rep.effective_policy() == "each-site":
            for site, names in replicas.items():
                if not self._site_holds(names, acked):
                    self.violations.append(f"{acked.version_id} acked under each-site "
                                           f"before any replica in {site} had it")
        self.acked.append(acked)

    def check_rpo(self) -> None:
        """The live RPO is 0 only if every version is on every replica its placement names:
        whenever every node is up, idle and reports 0, that must hold."""
        nodes = list(self.net.nodes.values())
        if self.in_flight or not all(n.alive for n in nodes):
            return
        if any(n.hints.backlog().versions or n.doubts.pending() for n in nodes):
            return
        self.rpo_zero_seen += 1
        rep = nodes[0].replicator
        assert rep is not None
        for node in nodes:
            for v in node.store.versions.values():
                for names in rep.replicas_for(v.tenant, v.bucket, v.key).values():
                    for name in names:
                        if (v.tenant, v.bucket, v.key, v.hlc, v.node) not in \
                                self.net.nodes[name].store.versions:
                            self.violations.append(
                                f"live RPO 0 everywhere while {v.version_id} of {v.key} "
                                f"is on {node.name} but not on {name}")

    async def reuse(self, node: SimNode, key: str) -> None:
        """A request id of an earlier put, reused for a put of other content to *key*."""
        if not self.request_ids or node.replicator is None:
            return
        rid = self.request_ids[len(self.request_ids) // 2]
        first = node.store.find_request("t", rid)
        version, value = self._new_version(node, key, False, rid)
        self.in_flight += 1
        try:
            await self._attempt(node, version, value, False, retried=False)
        except RequestIdConflict:
            self.conflicts += 1
            return
        except HdsdError:
            return
        finally:
            self.in_flight -= 1
        if first is not None:
            self.violations.append(f"request id of {first.version_id} reused for other "
                                   "content and acknowledged")

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
            elif kind == "retry":
                node, other = net.nodes[names[step[1]]], net.nodes[names[step[2]]]
                if node.alive and node.requests is not None:
                    node.requests.start_soon(run.put, node, step[3], step[4], other,
                                             step[5] if len(step) > 5 else 0.0)
            elif kind == "reuse":
                node = net.nodes[names[step[1]]]
                if node.alive and node.requests is not None:
                    node.requests.start_soon(run.reuse, node, step[2])
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
            run.check_rpo()
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
        for _ in range(60):
            await trio.sleep(1)
            run.check_rpo()
        root.cancel_scope.cancel()
    return run


def _check(run: Run) -> None:
    assert not run.violations, run.violations
    net = run.net
    rep = next(iter(net.nodes.values())).replicator
    assert rep is not None
    for v in run.acked:
        for site, names in rep.replicas_for(v.tenant, v.bucket, v.key).items():
            for name in names:
                assert run._holds(name, v), f"acked {v.version_id} missing on {name} ({site})"
    # The live RPO of every node reached 0...
    for node in net.nodes.values():
        assert node.hints.backlog().versions == 0, (node.name, node.hints.backlog())
        assert not node.doubts.pending(), (node.name, node.doubts.describe())
    # ...and then every version stored anywhere is on every replica of its key.
    everywhere = {k: v for node in net.nodes.values() for k, v in node.store.versions.items()}
    for v in everywhere.values():
        for names in rep.replicas_for(v.tenant, v.bucket, v.key).values():
            for name in names:
                assert (v.tenant, v.bucket, v.key, v.hlc, v.node) in \
                    net.nodes[name].store.versions, \
                    f"{v.version_id} of {v.key} is somewhere but not on {name} while RPO is 0"


def _fields(v: Version) -> dict[str, Any]:
    return {f: getattr(v, f) for f in v.__dataclass_fields__}


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
# A put's hint kept by a request that outlived its node's crash (the simulation lets it): the
# restarted node's replay task was never told, and found the hint only by asking the hint
# store again (a randomized run; the live RPO of a-n1 stayed at 1 after healing).
@example(steps=[("retry", 0, 0, "k0", False, 1.0), ("lossy", 0.4375), ("fail_fsync", 0)],
         seed=0)
def test_two_sites_one_node_each(steps: list[tuple[Any, ...]], seed: int) -> None:
    _run_sim(steps, seed, 1, 1)


@settings(max_examples=15 * _SCALE)
@given(_steps(4), st.integers(0, 2**32 - 1), st.sampled_from([1, 2]))
# A put coordinated by a node that is not a replica of the key, which crashes between one
# replica's fsync and its hint: the replicas must doubt each other (a coordinator's session
# ended), or the live RPO reads 0 while the other site lacks the version.
@example(steps=[("put", 1, "k0", False), ("crash", 1)], seed=1_000_000, replicas=1)
# Under `local` (site a degraded), a chunked put whose chunk one replica missed (a cut and a
# lossy link): the version must not reach that replica without its chunk, or the replica holds
# a version it cannot serve, and a hint that needs the chunk from it never drains (found by a
# randomized run; the live RPO of a-n1 stayed at 2 after healing).
@example(steps=[
    ("heal",), ("put", 0, "k0", True), ("put", 0, "k0", True), ("put", 0, "k0", False),
    ("put", 0, "k0", False), ("put", 0, "k0", True), ("put", 2, "k4", True), ("heal",),
    ("sleep", 0.0), ("put", 0, "k0", True), ("put", 0, "k0", True), ("heal",),
    ("degrade", "a"), ("fail_fsync", 2), ("degrade", "a"),
    ("retry", 1, 2, "k5", True, 3.6162664454526867), ("restart", 2), ("cut", 3, 0, True),
    ("lossy", 0.113512400008726), ("put", 3, "k3", True),
    ("retry", 3, 3, "k3", True, 1.5790224554044419), ("put", 0, "k0", False),
    ("put", 0, "k5", True), ("retry", 3, 3, "k4", False, 3.434245609605325),
    ("degrade", "a"), ("put", 0, "k3", False), ("put", 1, "k3", False), ("heal",),
    ("fail_fsync", 0), ("put", 0, "k2", False), ("put", 2, "k0", True),
    ("put", 2, "k3", False), ("crash", 2), ("lossy", 0.5), ("sleep", 0.9600234986433562),
    ("lossy", 0.4673457785309143), ("degrade", "a"), ("reuse", 0, "k0"), ("crash", 0),
], seed=420, replicas=1)
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


def test_retry_of_a_refused_put_is_refused_again() -> None:
    """Finding 1 of the acknowledgement issue: the other site unreachable, the first attempt
    stores its version here and is refused; the retry finds that version and must not turn
    the refusal into an acknowledgement. Once the link heals, the version reaches the other
    site without any repair (hints and the reconciliation round), and the RPO reads 0."""
    steps: list[tuple[Any, ...]] = [("cut", 0, 1, True)]
    steps += [("retry", 0, 0, f"k{i % 6}", i % 2 == 0, 0.5) for i in range(8)]
    steps += [("sleep", 10.0), ("heal",)]
    run = _run_sim(steps, 3, 1, 1)
    assert run.acked == []
    assert run.refusals.count("quorum_not_reached") == 16  # both attempts of each put
    assert run.rpo_zero_seen > 0


def test_retry_after_the_heal_acknowledges_the_first_version() -> None:
    """The retry comes once the link is back: it completes the first attempt's version (no
    second version) and is acknowledged because the policy now holds for it."""
    steps: list[tuple[Any, ...]] = [("cut", 0, 1, True), ("retry", 0, 0, "k0", False, 4.0),
                                    ("sleep", 3.0), ("heal",), ("sleep", 5.0)]
    run = _run_sim(steps, 5, 1, 1)
    assert run.retried_acks == 1 and len(run.acked) == 1
    for node in run.net.nodes.values():
        assert len(node.store.of_key("t", "b", "k0")) == 1


def test_refused_write_through_a_coordinator_that_is_not_a_replica() -> None:
    """2 x 2, one replica per site: a put coordinated by a node that holds no copy of the key,
    refused while the other site is cut off, leaves its version on the replica that took it;
    it is counted (hint) and completed after the heal."""
    steps: list[tuple[Any, ...]] = [("cut", 0, 2, True), ("cut", 0, 3, True),
                                    ("cut", 1, 2, True), ("cut", 1, 3, True)]
    steps += [("put", i % 2, f"k{i}", False) for i in range(6)]
    steps += [("sleep", 10.0), ("heal",)]
    run = _run_sim(steps, 11, 2, 1)
    assert run.acked == []
    assert run.rpo_zero_seen > 0


def test_request_id_reused_for_another_key_is_refused() -> None:
    steps: list[tuple[Any, ...]] = [("put", 0, "k0", False), ("sleep", 1.0),
                                    ("reuse", 0, "k1"), ("sleep", 1.0)]
    run = _run_sim(steps, 2, 1, 1)
    assert run.conflicts == 1 and len(run.acked) == 1
    for node in run.net.nodes.values():
        assert node.store.of_key("t", "b", "k1") == []
