"""The ``local`` policy's write with one replica per site (this node one of them).

It runs like the ``each-site`` pair write — in the caller's task, the peer's request batched
and carrying the names sealed here — but is acknowledged on this node's commit: the peer's
answer is awaited a short grace once its request is out, and a peer that has not confirmed by
then is returned as lagging (the caller keeps a durable hint for it before the put is
acknowledged). The grace follows the peer's recent answer times (smoothed, plus four
deviations, within bounds), so a healthy peer is waited for and a hint is the exception. These
tests pin that: what the peer receives, when the write returns, how the grace adapts, that
every way the peer can fail to confirm ends in a hint, never in an error raised into nobody,
and that a peer link with no free slot is not queued for longer than the grace.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hdsd import QuorumNotReached, RequestTimeout
from hdsd.replication import Replicator, WritePolicy
from hdsd.replication._replicator import _GRACE_MAX_S, _GRACE_MIN_S
from hdsd.store import Version
from hdsd.wire import Message, Replicate

from .sim import FSYNC_S, SimNet, SimNode, make_layout

COORDINATOR, PEER = "a-n1", "b-n1"


def _version(i: int) -> Version:
    value = f"value-{i}".encode()
    return Version(tenant="t", bucket="b", key=f"k{i}", hlc=1000 + i, node=COORDINATOR,
                   size=len(value), content_hash=bytes([i]) * 32, chunks=(bytes([i]) * 32,),
                   inline=value, request_id=i.to_bytes(16, "big"))


Scenario = Callable[[SimNet, Replicator], Awaitable[None]]


def _run(tmp_path: Path, scenario: Scenario, *, policy: WritePolicy = "local",
         timeout: float = 2.0) -> SimNet:
    """Two sites, one node each, *policy* on the coordinator; runs *scenario* on the mock
    clock, then lets every background send and reply end."""
    net = SimNet(make_layout(1, 1), tmp_path, random.Random(0), timeout=timeout)

    async def main() -> None:
        try:
            async with trio.open_nursery() as nursery:
                for node in net.nodes.values():
                    await node.start(nursery)
                rep = net.nodes[COORDINATOR].replicator
                assert rep is not None
                rep.policy = policy
                await scenario(net, rep)
                await trio.sleep(3 * timeout)  # what was left running ends (or fails) here
                nursery.cancel_scope.cancel()
        finally:
            for node in net.nodes.values():
                node.hints.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return net


def _record_replicates(net: SimNet) -> list[Replicate]:
    seen: list[Replicate] = []
    call = net.call

    async def recording(src: str, dst: str, msg: Message) -> dict[str, Any]:
        if isinstance(msg, Replicate):
            seen.append(msg)
        return await call(src, dst, msg)

    net.call = recording  # type: ignore[method-assign]
    return seen


def _slow_peer(node: SimNode, delay: float, fail: bool = False) -> None:
    """The peer answers *delay* after the request reaches it (storing it first), or fails."""
    handle = node.handle

    async def slow(msg: Message) -> dict[str, Any]:
        if isinstance(msg, Replicate):
            await trio.sleep(delay)
            if fail:
                node.store.fail_next_fsync = True
        return await handle(msg)

    node.handle = slow  # type: ignore[method-assign]


@pytest.mark.parametrize("policy", ["local", "majority"])
def test_the_peer_receives_the_names_sealed_here(tmp_path: Path, policy: WritePolicy) -> None:
    # Like each-site's pair write, so the peer stores the record as sealed by the coordinator
    # instead of sealing its names again (the general path sent clear versions).
    seen: list[list[Replicate]] = []
    lagging: list[set[str]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        seen.append(_record_replicates(net))
        lagging.append(await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)]))

    _run(tmp_path, scenario, policy=policy)
    assert lagging == [set()]
    [sent] = seen[0]
    assert len(sent.versions) == 1 and {"g", "y", "e"} <= set(sent.versions[0])


def test_a_write_returns_a_grace_after_the_send_while_the_peer_is_slow(tmp_path: Path) -> None:
    # Acknowledged on the local commit: a peer that answers later is lagging (hinted), and the
    # write does not wait for it, nor for the write timeout.
    out: list[tuple[set[str], float, bool]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        _slow_peer(net.nodes[PEER], 0.5)
        start = trio.current_time()
        lagging = await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)])
        took = trio.current_time() - start
        out.append((lagging, took, bool(net.nodes[PEER].store.versions)))

    net = _run(tmp_path, scenario)
    lagging, took, peer_had_it = out[0]
    assert lagging == {PEER} and not peer_had_it
    assert _GRACE_MIN_S <= took < 0.5
    assert len(net.nodes[PEER].store.versions) == 1  # it answered later: stored all the same


def test_a_healthy_peer_is_waited_for_within_the_grace(tmp_path: Path) -> None:
    # The peer answers before the grace is up: no hint needed (the grace's purpose).
    out: list[set[str]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        _slow_peer(net.nodes[PEER], _GRACE_MIN_S / 4)
        out.append(await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)]))

    _run(tmp_path, scenario)
    assert out == [set()]


def test_the_grace_follows_the_peer_s_answer_time_within_its_bound(tmp_path: Path) -> None:
    # A peer that always answers in 12 ms (the other site farther away, or loaded): the first
    # writes miss the initial grace and are hinted, then the grace has grown past its answer
    # time and none is. One that takes 1 s is never waited for longer than the upper bound.
    out: dict[str, list[tuple[set[str], float]]] = {"steady": [], "slow": []}

    async def scenario(net: SimNet, rep: Replicator) -> None:
        replicas = rep.replicas_for("t", "b", "k0")
        for name, delay in (("steady", 0.012), ("slow", 1.0)):
            _slow_peer(net.nodes[PEER], delay)
            for i in range(40):
                start = trio.current_time()
                lagging = await rep.write(replicas, [], [_version(i)])
                out[name].append((lagging, trio.current_time() - start))
            await trio.sleep(2 * delay)  # the last answers come in

    _run(tmp_path, scenario)
    steady = [lagging for lagging, _ in out["steady"]]
    assert steady[0] == {PEER} and steady[-10:] == [set()] * 10
    assert all(lagging == {PEER} for lagging, _ in out["slow"])
    assert max(took for _, took in out["slow"]) < _GRACE_MAX_S + 0.01


@pytest.mark.parametrize("fail", [False, True])
def test_a_peer_outcome_after_the_acknowledgement_is_covered_by_the_hint(
        tmp_path: Path, fail: bool) -> None:
    # The caller's flow (hdsd.node): hints for the lagging before the ack. Whatever the peer
    # says later — stored, or its store failed — the hint counts the version (live RPO) and
    # nothing raises into the node's nursery (the run would fail).
    backlog: list[int] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        _slow_peer(net.nodes[PEER], 0.5, fail=fail)
        v = _version(0)
        await rep.keep_hints(await rep.write(rep.replicas_for("t", "b", "k0"), [], [v]), [v])
        backlog.append(rep.backlog()[PEER].versions)

    net = _run(tmp_path, scenario)
    assert backlog == [1]
    assert bool(net.nodes[PEER].store.versions) is not fail


def test_a_peer_that_never_answers_ends_within_the_write_timeout(tmp_path: Path) -> None:
    # Its request went out and its answer is lost: acknowledged on the local commit after the
    # grace, far within the write timeout.
    out: list[tuple[set[str], float]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        net.cut.add((PEER, COORDINATOR))  # the request arrives, the answer never does
        start = trio.current_time()
        lagging = await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)])
        out.append((lagging, trio.current_time() - start))

    _run(tmp_path, scenario, timeout=2.0)
    lagging, took = out[0]
    assert lagging == {PEER} and took < 2.0


def test_a_caller_that_goes_away_does_not_cut_the_write(tmp_path: Path) -> None:
    # The client's cancellation reaches neither the peer's request nor the local commit
    # (shielded, as the pair write): both sites store the version.
    async def scenario(net: SimNet, rep: Replicator) -> None:
        _slow_peer(net.nodes[PEER], FSYNC_S)
        with trio.move_on_after(FSYNC_S / 10):
            await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)])

    net = _run(tmp_path, scenario)
    assert len(net.nodes[COORDINATOR].store.versions) == 1
    assert len(net.nodes[PEER].store.versions) == 1


def test_a_failed_local_commit_refuses_the_write_and_hints_it(tmp_path: Path) -> None:
    # local needs this node's commit: without it the write is refused (nothing acknowledged),
    # and the version the peer stored is hinted for this node (it may surface: merge is a
    # union), so replay completes it here.
    out: list[tuple[bool, int]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        net.nodes[COORDINATOR].store.fail_next_fsync = True
        try:
            await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)])
        except QuorumNotReached:
            out.append((True, rep.backlog()[COORDINATOR].versions))

    net = _run(tmp_path, scenario)
    assert out == [(True, 1)]
    assert len(net.nodes[PEER].store.versions) == 1


def test_a_peer_that_is_down_takes_the_general_path(tmp_path: Path) -> None:
    # Towards an unreachable peer (degraded mode) the write does not wait for the link's
    # reconnection: acknowledged on the local commit, the peer lagging.
    out: list[set[str]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        net.cut.add((COORDINATOR, PEER))
        out.append(await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)]))

    _run(tmp_path, scenario)
    assert out == [{PEER}]


def test_a_peer_link_with_no_free_slot_is_waited_for_a_grace_at_most(tmp_path: Path) -> None:
    # The link's in-flight bound is full (a slow peer: requests whose answer the grace cut
    # keep their slots, tests/peers/test_call.py): the write asks for a slot within its grace
    # only; the link then gives up with nothing sent, and the peer is hinted, not queued for.
    out: list[tuple[set[str], float | None, bool]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        asked: list[float | None] = []

        async def busy(node: str, request: Any, *, sent: Any = None, shielded: bool = False,
                       slot_wait: float | None = None) -> Any:
            asked.append(slot_wait)
            await trio.sleep(slot_wait if slot_wait is not None else 60)
            raise RequestTimeout(f"peer {node} busy: no free slot within {slot_wait} s")

        rep.peers.call = busy  # type: ignore[method-assign]
        grace = rep._grace_s.get(PEER, _GRACE_MIN_S)
        lagging = await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)])
        out.append((lagging, asked[0] if asked == [grace] else None,
                    bool(net.nodes[COORDINATOR].store.versions)))

    net = _run(tmp_path, scenario)
    lagging, slot_wait, here = out[0]
    assert lagging == {PEER} and slot_wait == _GRACE_MIN_S and here
    assert not net.nodes[PEER].store.versions  # never sent: the hint brings it
