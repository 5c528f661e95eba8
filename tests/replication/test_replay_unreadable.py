"""A hint whose version no replica can serve whole does not block the hints behind it.

The replay loads a hinted version with its chunks from this node's store or another replica.
A replica that names the version but lacks a chunk of it (or holds one damaged) cannot serve
it, and before this the load raised at each replay: the batch stopped at that hint, so every
hint behind it for the same target waited for ever and the live RPO never drained. Such a
hint is now unheld — given up after twice the write timeout, as a refused write's is — and
the hints behind it are replayed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from hdsd.replication import Replicator

from .sim import SimNet
from .test_local_writes import COORDINATOR, PEER, _run, _version


def test_a_version_without_its_chunk_anywhere_does_not_block_the_next_hint(
        tmp_path: Path) -> None:
    out: list[tuple[bool, int]] = []

    async def scenario(net: SimNet, rep: Replicator) -> None:
        here = net.nodes[COORDINATOR].store
        # Named here, its one chunk on no node: what a replica that missed a chunk was sent.
        broken = dataclasses.replace(_version(1), inline=None)
        here.versions[(broken.tenant, broken.bucket, broken.key, broken.hlc,
                       broken.node)] = broken
        good = _version(2)
        await here.commit([good])
        net.cut.add((COORDINATOR, PEER))  # both hinted while the peer is out of reach
        await rep.keep_hints({PEER}, [broken])
        await rep.keep_hints({PEER}, [good])
        net.heal()
        await trio.sleep(5 * rep.timeout)
        got = net.nodes[PEER].store.get_version(good.tenant, good.bucket, good.key, good.hlc,
                                               good.node)
        out.append((got is not None, net.nodes[COORDINATOR].hints.backlog().versions))

    _run(tmp_path, scenario)
    assert out == [(True, 0)]
