"""A get or stat on a node whose store alone answers for the key (its only replica in the site)
reads the one version it serves — the key's head, or the version named — not every version of
the key; what it answers is what merging the key's records gives (``visible_versions``), also
after a delete, a purge of the current version, and for the id of a purge record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from hdsd import AsyncClient, NotFound
from hdsd.node import Node, load_node_config, serve_node
from hdsd.node._objects import _named, purge_version, resolve
from hdsd.store import Version, visible_versions
from tests.helpers.cluster import init_cluster


class _Opened:
    """Counts the version records the index opens (their sealed names decrypted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import hdsd.store._index as index

        self.n = 0
        real = index.open_version

        def counted(*args: Any) -> Version:
            self.n += 1
            return real(*args)

        monkeypatch.setattr(index, "open_version", counted)


async def _merged(node: Node, tenant: str, key: str, version: str | None) -> Version | None:
    """What the general path answers: every record of the key merged, then the one named."""
    try:
        found = _named(visible_versions(await node.reads.key_records(tenant, "b", key)), "b",
                       key, version)
    except NotFound:
        return None
    return None if found.tombstone else found


async def _resolved(node: Node, tenant: str, key: str, version: str | None) -> Version | None:
    try:
        return await resolve(node, tenant, "b", key, version)
    except NotFound:
        return None


async def test_a_get_reads_the_one_version_it_serves(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    init_cluster(tmp_path)
    bodies = [os.urandom(100) + bytes([n]) for n in range(6)]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes: list[Node] = [
                await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                for n in ("dc1-n1", "dc2-n1")]
            node = nodes[0]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                tenant = client.profile.tenant
                infos = [await client.put("b", "k", body) for body in bodies]
                for n in range(3):
                    await client.put("b", "p", bodies[n])
                await client.put("b", "gone", b"x")
                marker = await client.delete("b", "gone")
                while any(n.rebuilding or n.checking for n in nodes):
                    await trio.sleep(0.05)
                assert node.reads.local_only(tenant, "b", "k")
                # The put cached k's head; a comparison round of the start that re-sent k's
                # versions to dc1 while the puts ran drops it (a copy of a key drops its head):
                # one read re-caches it, before the count (it failed so once in CI).
                await client.get("b", "k")

                opened = _Opened(monkeypatch)
                assert await client.get("b", "k") == bodies[-1]  # the reader's get
                assert (await client.stat("b", "k")).version == infos[-1].version  # a task's
                assert await client.get("b", "k", version=infos[2].version) == bodies[2]
                # Of a key with six versions, one record opened: the named one. The head, for
                # the get and the stat, is the index's cached one.
                assert opened.n == 1

                # A delete marker is not found, as current or named; the versions under it are.
                for version in (None, marker.version):
                    with pytest.raises(NotFound):
                        await client.get("b", "gone", version=version)
                    with pytest.raises(NotFound):
                        await client.stat("b", "gone", version=version)
                with pytest.raises(NotFound):
                    await client.get("b", "never")

                # A purge of the current version: the one before it is current again; the
                # purged one and the purge record itself are not found by their ids.
                p = await client.versions("b", "p")
                purged, record, _ = await purge_version(node, tenant, "b", "p", p[-1].version,
                                                        os.urandom(16))
                assert await client.get("b", "p") == bodies[1]
                for version in (purged.version_id, record.version_id):
                    with pytest.raises(NotFound):
                        await client.get("b", "p", version=version)

                # Every answer is the general path's (all the key's records, merged).
                for key in ("k", "p", "gone", "never"):
                    ids = [None, *(v.version_id for v in
                                   await node.reads.key_records(tenant, "b", key))]
                    for version in ids:
                        assert await _resolved(node, tenant, key, version) == \
                            await _merged(node, tenant, key, version), (key, version)
            nursery.cancel_scope.cancel()


async def test_a_get_sees_every_acknowledged_write_of_either_site(tmp_path: Path) -> None:
    """Each node caches the heads it reads and writes (``Index.current``): a get from either
    site after an acknowledged put, delete or purge — coordinated by this site or by the other
    one, so arriving here replicated — answers with that write, never a head it replaced."""
    init_cluster(tmp_path)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes: list[Node] = [
                await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                for n in ("dc1-n1", "dc2-n1")]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as one, \
                    AsyncClient(tmp_path / "client.toml", site="dc2") as two:
                while any(n.rebuilding or n.checking for n in nodes):
                    await trio.sleep(0.05)
                tenant = one.profile.tenant
                assert all(n.reads.local_only(tenant, "b", "k") for n in nodes)
                clients = (one, two)
                for n in range(8):
                    body = os.urandom(200) + bytes([n])
                    await clients[n % 2].put("b", "k", body)
                    for client in clients:  # both sites: each its own store's head
                        assert await client.get("b", "k") == body
                await two.delete("b", "k")
                for client in clients:
                    with pytest.raises(NotFound):
                        await client.get("b", "k")
                last = os.urandom(300)
                await one.put("b", "k", last)
                for client in clients:
                    assert await client.get("b", "k") == last
                versions = await one.versions("b", "k")
                await purge_version(nodes[1], tenant, "b", "k", versions[-1].version,
                                    os.urandom(16))
                for client in clients:
                    with pytest.raises(NotFound):  # the delete marker is current again
                        await client.get("b", "k")
            nursery.cancel_scope.cancel()
