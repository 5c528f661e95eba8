"""A small chunk whose record is in the page cache is read and opened on the event loop, without
a worker thread's hop; any other (bigger, not cached, size unknown) in a worker thread as
before; a chunk missing or damaged here is read from another replica either way. And on real
nodes: a get of an object of one chunk under ``ON_LOOP_MAX`` takes no hop."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio

from hdsd import AsyncClient, IntegrityError, NotFound
from hdsd.node import ReadPaths, load_node_config, serve_node
from hdsd.node._objects import resolve
from hdsd.node._reads import ON_LOOP_MAX
from hdsd.wire import FetchChunk
from tests.helpers.cluster import init_cluster

REPLICAS = {"dc1": ["dc1-n1"], "dc2": ["dc2-n1"]}
CID = bytes(32)


class _Store:
    """``now``: what ``read_chunk_now`` answers (bytes, None, or an exception to raise)."""

    def __init__(self, now: object) -> None:
        self.now = now
        self.calls: list[str] = []

    def read_chunk_now(self, tenant: str, chunk_id: bytes) -> memoryview | None:
        self.calls.append("now")
        if isinstance(self.now, Exception):
            raise self.now
        return None if self.now is None else memoryview(cast(bytes, self.now))

    def read_chunk_view(self, tenant: str, chunk_id: bytes) -> memoryview:
        self.calls.append("thread")
        return memoryview(b"from the thread")

    async def commit(self, records: list[Any]) -> None:
        self.calls.append("repaired")


class _Peers:
    def __init__(self) -> None:
        self.asked = 0

    async def call(self, node: str, request: Any) -> Any:
        assert isinstance(request, FetchChunk) and node == "dc2-n1"
        self.asked += 1
        return {"payload": b"from a peer"}


CODEC: Any = SimpleNamespace(open=lambda chunk_id, payload: bytes(payload))


def _reads(store: _Store, peers: _Peers) -> ReadPaths:
    layout = SimpleNamespace(layout_id="L", other_site=lambda s: "dc2" if s == "dc1" else "dc1")
    return ReadPaths(config=cast(Any, SimpleNamespace(name="dc1-n1", site="dc1")),
                     store=cast(Any, store), peers=cast(Any, peers),
                     replicator=cast(Any, SimpleNamespace(replicas_for=lambda *a: REPLICAS)),
                     layout=lambda: cast(Any, layout), rebuilding=lambda: False,
                     checking=lambda: False)


@pytest.mark.parametrize(("now", "size", "plain", "calls"), [
    (b"cached", 6, b"cached", ["now"]),
    (b"cached", ON_LOOP_MAX, b"cached", ["now"]),
    (None, 6, b"from the thread", ["now", "thread"]),  # not all cached: a thread reads it
    (b"cached", ON_LOOP_MAX + 1, b"from the thread", ["thread"]),  # too big for the loop
    (b"cached", None, b"from the thread", ["thread"]),  # size unknown
    (IntegrityError("rot"), 6, b"from a peer", ["now"]),  # damaged here: another replica's
    (NotFound("gone"), 6, b"from a peer", ["now", "repaired"]),  # missing: repaired here
])
async def test_a_small_cached_chunk_is_read_on_the_loop(now: object, size: int | None,
                                                        plain: bytes, calls: list[str]) -> None:
    store, peers = _Store(now), _Peers()
    got = await _reads(store, peers).chunk_payload("t", "b", "k", CID, CODEC, size)
    assert (got, store.calls, peers.asked) == (plain, calls, int(plain == b"from a peer"))


async def test_a_get_of_one_small_chunk_takes_no_worker_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_cluster(tmp_path)
    hops: list[str] = []
    real = trio.to_thread.run_sync

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "read_and_open":
            hops.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    small, big = os.urandom(40 << 10), os.urandom(ON_LOOP_MAX + 1)  # both over inline_max
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                await client.put("b", "small", small)
                await client.put("b", "big", big)
                while any(n.rebuilding or n.checking for n in nodes):
                    await trio.sleep(0.05)
                monkeypatch.setattr(trio.to_thread, "run_sync", counted)
                # A file system that cannot tell what is cached reads in a thread, as before.
                tenant = client.profile.tenant
                version = await resolve(nodes[0], tenant, "b", "small", None)
                tells = nodes[0].store.read_chunk_now(tenant, version.chunks[0]) is not None
                assert await client.get("b", "small") == small
                assert hops == ([] if tells else ["read_and_open"])
                hops.clear()
                assert await client.get("b", "big") == big
                assert hops == ["read_and_open"]
            nursery.cancel_scope.cancel()
