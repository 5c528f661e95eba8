"""A version is never sent to a replica that missed one of its chunks.

A chunked put writes its chunks first, then the version record with the last one. When the
policy did not wait for every replica (``local``, or a placement with more replicas than the
policy needs), a replica may not have confirmed some chunk: sending it the version record
anyway would leave it holding a version that names content it lacks — unreadable there, and,
if the put was then refused, a version no node can ever complete, whose hint never drains
(found by the deterministic simulation). ``Replicator.write(..., missed=...)`` sends such a
replica nothing, counts it as not confirmed — for the policy too — and returns it among the
lagging, so the caller hints it and the replay brings the chunks with the version.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hdsd import QuorumNotReached
from hdsd.replication import Replicator

from .sim import SimNet
from .test_local_writes import COORDINATOR, PEER, _record_replicates, _run, _version


def test_local_a_replica_that_missed_a_chunk_gets_no_version_and_is_hinted(
        tmp_path: Path) -> None:
    out: list[tuple[set[str], int]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        seen = _record_replicates(net)
        lagging = await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)],
                                  missed=frozenset({PEER}))
        out.append((lagging, len(seen)))

    net = _run(tmp_path, scenario)
    [(lagging, sent)] = out
    assert lagging == {PEER}  # the caller keeps a hint for it before the acknowledgement
    assert sent == 0 and not net.nodes[PEER].store.versions
    assert len(net.nodes[COORDINATOR].store.versions) == 1  # local's promise: committed here


def test_each_site_a_missed_replica_does_not_count_for_the_policy(tmp_path: Path) -> None:
    # The peer is the only replica of its site: without it each-site cannot hold, and the
    # version is not acknowledged (nor sent to it).
    out: list[BaseException] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        seen = _record_replicates(net)
        with pytest.raises(QuorumNotReached) as refused:
            await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)],
                            missed=frozenset({PEER}))
        out.append(refused.value)
        assert not seen

    _run(tmp_path, scenario, policy="each-site")
    assert "did not confirm every chunk" in str(out[0])
    # (The refused version, committed here, is hinted to the peer as any refused write is:
    # the replay that follows carries the chunks with the version.)


def test_nothing_missed_sends_the_version_to_every_replica(tmp_path: Path) -> None:
    out: list[set[str]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        out.append(await rep.write(rep.replicas_for("t", "b", "k0"), [], [_version(0)],
                                   missed=frozenset()))
        await trio.sleep(0)

    net = _run(tmp_path, scenario, policy="each-site")
    assert out == [set()]
    assert len(net.nodes[PEER].store.versions) == 1
