"""ReadPaths over a fake 2x2 placement: which replicas a read waits for, and when a put's
request-id search may go on without a whole site (the real-process counterpart is
tests/e2e/test_replication.py::test_a_put_through_a_rebuilding_node_with_a_peer_killed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from hdsd import ConnectionLost, Unavailable
from hdsd.node import ReadPaths
from hdsd.store import Version
from hdsd.wire import FetchVersions

REPLICAS = {"dc1": ["dc1-n1", "dc1-n2"], "dc2": ["dc2-n1", "dc2-n2"]}


def _version(request_id: bytes, node: str = "dc1-n2") -> Version:
    return Version(tenant="t", bucket="b", key="k", hlc=1 << 20, node=node, size=1,
                   content_hash=b"h" * 32, chunks=(b"c" * 32,), request_id=request_id)


class _Peers:
    """Each peer answers FetchVersions with what it holds; a dead one is unreachable."""

    def __init__(self, held: dict[str, list[Version]], dead: set[str]) -> None:
        self.held = held
        self.dead = dead
        self.asked: list[str] = []

    async def call(self, node: str, request: Any) -> Any:
        assert isinstance(request, FetchVersions)
        self.asked.append(node)
        if node in self.dead:
            raise ConnectionLost(f"peer {node} unreachable")
        return {"versions": [v.to_wire() for v in self.held.get(node, [])]}


def _reads(peers: _Peers, *, rebuilding: bool) -> ReadPaths:
    """dc1-n1's read paths: its own store empty (a rebuild has not brought anything yet)."""
    store = SimpleNamespace(versions=lambda *a: [], find_request=lambda *a: None)
    layout = SimpleNamespace(layout_id="L", other_site=lambda s: "dc2" if s == "dc1" else "dc1")
    return ReadPaths(config=cast(Any, SimpleNamespace(name="dc1-n1", site="dc1")),
                     store=cast(Any, store), peers=cast(Any, peers),
                     replicator=cast(Any, SimpleNamespace(replicas_for=lambda *a: REPLICAS)),
                     layout=lambda: cast(Any, layout), rebuilding=lambda: rebuilding,
                     checking=lambda: False)


async def test_a_first_attempt_is_not_refused_when_no_site_answers_whole() -> None:
    # dc1-n1 is rebuilding (its store is not its whole answer) and dc2-n2 was killed before
    # the rebuild's round with it: neither site can answer whole. A read of a key nobody
    # holds is refused (a silent replica is never a false "not found")...
    peers = _Peers({}, dead={"dc2-n2"})
    reads = _reads(peers, rebuilding=True)
    with pytest.raises(Unavailable, match=r"did not answer \(dc1-n1, dc2-n2\)"):
        await reads.versions_of("t", "b", "k")
    # ...but a put's first attempt only searches for its own request id: what could not be
    # searched costs at most a second version of the same content, so it is written.
    assert await reads.find_request("t", b"rid", "b", "k") is None
    assert set(peers.asked) >= {"dc1-n2", "dc2-n1", "dc2-n2"}


async def test_a_first_attempt_still_finds_its_version_on_a_replica_that_answered() -> None:
    earlier = _version(b"rid")
    peers = _Peers({"dc1-n2": [earlier]}, dead={"dc2-n2"})
    reads = _reads(peers, rebuilding=True)
    assert await reads.find_request("t", b"rid", "b", "k") == earlier
    assert await reads.find_request("t", b"other", "b", "k") is None


async def test_a_read_through_a_trusted_store_needs_only_its_site() -> None:
    # Not rebuilding: dc1-n1's (empty) store and dc1-n2's answer make dc1 whole; the dead
    # dc2-n2 is not even asked.
    peers = _Peers({}, dead={"dc2-n2"})
    assert await _reads(peers, rebuilding=False).versions_of("t", "b", "k") == []
    assert peers.asked == ["dc1-n2"]
