"""Concurrent writes to one peer share a Replicate request, on every write path.

The pair path (``each-site``, one replica per site) batched from the start; the general path
(``local``, ``majority``, several replicas per site) sent one request per write, so under
``local`` each client's 4 KiB put cost the peer its own frame, task and commit. These tests
count the Replicate requests a peer receives.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hdsd.replication import WritePolicy
from hdsd.store import Version
from hdsd.wire import Message, Replicate

from .sim import SimNet, make_layout

WRITES = 8


def _version(i: int, node: str) -> Version:
    value = f"value-{i}".encode()
    return Version(tenant="t", bucket="b", key=f"k{i}", hlc=1000 + i, node=node,
                   size=len(value), content_hash=bytes([i]) * 32, chunks=(bytes([i]) * 32,),
                   inline=value, request_id=i.to_bytes(16, "big"))


def _count_replicates(net: SimNet) -> list[tuple[str, int]]:
    """Wrap the net so every Replicate it carries is recorded as (target, versions)."""
    seen: list[tuple[str, int]] = []
    call = net.call

    async def counting(src: str, dst: str, msg: Message) -> dict[str, Any]:
        if isinstance(msg, Replicate):
            seen.append((dst, len(msg.versions)))
        return await call(src, dst, msg)

    net.call = counting  # type: ignore[method-assign]
    return seen


async def _concurrent_writes(tmp_path: Path, policy: WritePolicy) -> list[tuple[str, int]]:
    net = SimNet(make_layout(1, 1), tmp_path, random.Random(0))
    seen = _count_replicates(net)
    coordinator, replica = net.nodes["a-n1"], net.nodes["b-n1"]
    try:
        async with trio.open_nursery() as nursery:
            for node in net.nodes.values():
                await node.start(nursery)
            assert coordinator.replicator is not None
            rep = coordinator.replicator
            rep.policy = policy
            replicas = rep.replicas_for("t", "b", "k")
            async with trio.open_nursery() as writes:
                for i in range(WRITES):
                    writes.start_soon(rep.write, replicas, [], [_version(i, coordinator.name)])
            with trio.fail_after(5):  # virtual time: the background sends of `local`
                while len(replica.store.versions) < WRITES:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    finally:
        for node in net.nodes.values():
            node.hints.close()
    return seen


@pytest.mark.parametrize("policy", ["each-site", "local", "majority"])
def test_concurrent_writes_share_one_replicate(tmp_path: Path, policy: WritePolicy) -> None:
    seen = trio.run(_concurrent_writes, tmp_path, policy,
                    clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen == [("b-n1", WRITES)]


class _Passes(trio.abc.Instrument):
    """Counts the scheduler's passes (one I/O check each)."""

    def __init__(self) -> None:
        self.n = 0

    def before_io_wait(self, timeout: float) -> None:
        self.n += 1


async def _passes_before_the_send(tmp_path: Path, alone: bool) -> int:
    """Scheduler passes between a lone write's start and its Replicate leaving."""
    net = SimNet(make_layout(1, 1), tmp_path, random.Random(0))
    passes = _Passes()
    at_send: list[int] = []
    call = net.call

    async def recording(src: str, dst: str, msg: Message) -> dict[str, Any]:
        if isinstance(msg, Replicate):
            at_send.append(passes.n)
        return await call(src, dst, msg)

    net.call = recording  # type: ignore[method-assign]
    coordinator = net.nodes["a-n1"]
    try:
        async with trio.open_nursery() as nursery:
            for node in net.nodes.values():
                await node.start(nursery)
            rep = coordinator.replicator
            assert rep is not None
            rep.alone = lambda: alone
            trio.lowlevel.add_instrument(passes)
            start = passes.n
            await rep.write(rep.replicas_for("t", "b", "k"), [], [_version(0, coordinator.name)])
            nursery.cancel_scope.cancel()
    finally:
        for node in net.nodes.values():
            node.hints.close()
    return at_send[0] - start


@pytest.mark.parametrize("alone", [True, False])
def test_a_write_alone_on_the_node_is_sent_at_once(tmp_path: Path, alone: bool) -> None:
    # Nobody can join the batch of a node's only request: it skips the batch's yield (a
    # scheduler pass for nothing); with other requests in flight it still waits for them.
    passes = trio.run(_passes_before_the_send, tmp_path, alone,
                      clock=trio.testing.MockClock(autojump_threshold=0))
    assert (passes == 0) if alone else (passes > 0)


async def _pair_write(tmp_path: Path, peer_silent: bool) -> tuple[set[str], set[str], float]:
    """One pair write (each-site, one replica per site) with the coordinator's write timeout
    shorter than the link's own: (acked, failed, virtual seconds it took)."""
    net = SimNet(make_layout(1, 1), tmp_path, random.Random(0), timeout=60.0)
    coordinator = net.nodes["a-n1"]
    try:
        async with trio.open_nursery() as nursery:
            for node in net.nodes.values():
                await node.start(nursery)
            rep = coordinator.replicator
            assert rep is not None
            rep.timeout = 2.0
            if peer_silent:
                net.cut.add(("a-n1", "b-n1"))  # sent, never answered
            replicas = rep.replicas_for("t", "b", "k0")
            acked: set[str] = set()
            failed: dict[str, Any] = {}
            start = trio.current_time()
            await rep._write_pair([n for nodes in replicas.values() for n in nodes], [],
                                  [_version(0, coordinator.name)], acked, failed)
            took = trio.current_time() - start
            nursery.cancel_scope.cancel()
    finally:
        for node in net.nodes.values():
            node.hints.close()
    return acked, set(failed), took


@pytest.mark.parametrize("peer_silent", [False, True])
def test_a_pair_write_bounds_the_peer_and_still_waits_for_its_local_commit(
        tmp_path: Path, peer_silent: bool) -> None:
    # One cancel scope serves both halves of the write on the usual path; when the peer's half
    # times out, the local commit still gets its own bounded wait (and is acknowledged).
    acked, failed, took = trio.run(_pair_write, tmp_path, peer_silent,
                                   clock=trio.testing.MockClock(autojump_threshold=0))
    if peer_silent:
        assert acked == {"a-n1"} and failed == set() and 2.0 <= took < 4.0
    else:
        assert acked == {"a-n1", "b-n1"} and failed == set() and took < 2.0


async def _slow_pair_write(tmp_path: Path, peer_s: float, fsync_s: float
                           ) -> tuple[set[str], float]:
    """One pair write, write timeout 2 s: the peer answers *peer_s* after the request reaches
    it, the coordinator's own commit takes *fsync_s*. (acked, virtual seconds it took)."""
    net = SimNet(make_layout(1, 1), tmp_path, random.Random(0), timeout=60.0)
    coordinator, replica = net.nodes["a-n1"], net.nodes["b-n1"]
    handle = replica.handle

    async def slow(msg: Message) -> dict[str, Any]:
        await trio.sleep(peer_s)
        return await handle(msg)

    replica.handle = slow  # type: ignore[method-assign]
    coordinator.store.fsync_s = fsync_s
    try:
        async with trio.open_nursery() as nursery:
            for node in net.nodes.values():
                await node.start(nursery)
            rep = coordinator.replicator
            assert rep is not None
            rep.timeout = 2.0
            replicas = rep.replicas_for("t", "b", "k0")
            acked: set[str] = set()
            start = trio.current_time()
            await rep._write_pair([n for nodes in replicas.values() for n in nodes], [],
                                  [_version(0, coordinator.name)], acked, {})
            took = trio.current_time() - start
            nursery.cancel_scope.cancel()
    finally:
        for node in net.nodes.values():
            node.hints.close()
    return acked, took


@pytest.mark.parametrize(("peer_s", "fsync_s", "local_acked"), [
    (0.1, 1.5, True),   # the peer in the first half: the commit has what is left (1.9 s)
    (0.1, 2.5, False),  # ... and no more: the write ends within its timeout
    (1.5, 2.5, True),   # the peer in the second half: the commit gets a whole timeout more
])
def test_a_pair_write_leaves_its_local_commit_at_least_half_the_timeout(
        tmp_path: Path, peer_s: float, fsync_s: float, local_acked: bool) -> None:
    acked, took = trio.run(_slow_pair_write, tmp_path, peer_s, fsync_s,
                           clock=trio.testing.MockClock(autojump_threshold=0))
    assert "b-n1" in acked
    assert ("a-n1" in acked) is local_acked
    assert took < (2.0 if peer_s < 1.0 else peer_s + 2.0) + 0.01
