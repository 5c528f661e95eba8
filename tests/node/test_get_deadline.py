"""A streamed get's one deadline: it moves on with every chunk sent, and an abort says what
made no progress for ``request_timeout_s`` — the client (it read nothing) or the read of the
object's next chunk (a slow disk) — in the reply and in the audit record's outcome."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from hdsd import AsyncClient, ConnectionLost, RequestTimeout
from hdsd.audit import read_records
from hdsd.node import Node, load_node_config, serve_node
from hdsd.node._reads import ReadPaths
from tests.helpers.cluster import init_cluster

TIMEOUT_S = 1.0
MIB = 1 << 20


async def _nodes(nursery: trio.Nursery, root: Path) -> list[Node]:
    nodes = []
    for name in ("dc1-n1", "dc2-n1"):
        config = load_node_config(root / name / "node.toml")
        if name == "dc1-n1":
            config = dataclasses.replace(config, request_timeout_s=TIMEOUT_S)
        nodes.append(await nursery.start(serve_node, config))
    return nodes


async def _outcomes(node: Node) -> list[str]:
    await trio.to_thread.run_sync(node.audit.checkpoint_and_wait)
    return [r.outcome for r in read_records(node.config.data_dir / "audit")
            if r.op == "GetRequest"]


async def test_a_chunk_read_slower_than_the_timeout_aborts_the_get_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_cluster(tmp_path)
    data = os.urandom(3 * MIB)  # three chunks
    slow: list[bool] = [False]
    reads: list[int] = []
    real = ReadPaths.open_local

    def open_local(self: ReadPaths, tenant: str, chunk_id: bytes, codec: Any) -> bytes:
        reads.append(1)
        if slow[0] and len(reads) > 1:
            time.sleep(2.5 * TIMEOUT_S)  # a worker thread's read: a disk that hangs
        return real(self, tenant, chunk_id, codec)

    monkeypatch.setattr(ReadPaths, "open_local", open_local)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = await _nodes(nursery, tmp_path)
            async with AsyncClient(tmp_path / "client.toml", site="dc1", timeout=30) as client:
                await client.put("b", "big", data)
                assert await client.get("b", "big") == data  # in time: served whole
                slow[0], reads[:] = True, []
                # The first chunk is sent, the second's read hangs: the reply names the read
                # and where the bytes stopped, not the client.
                with pytest.raises(RequestTimeout, match=(
                        f"bytes from {MIB} on were not read within {TIMEOUT_S:g} s")):
                    await client.get("b", "big")
                slow[0] = False
                assert await client.get("b", "big") == data  # the connection still serves
            assert await _outcomes(nodes[0]) == ["ok", RequestTimeout.code, "ok"]
            nursery.cancel_scope.cancel()


async def test_a_client_that_reads_nothing_is_cut_off_and_told_why(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    data = os.urandom(40 * MIB)  # over the client's window and the socket buffers
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = await _nodes(nursery, tmp_path)
            async with AsyncClient(tmp_path / "client.toml", site="dc1", timeout=30) as client:
                await client.put("b", "big", data)
                got = 0
                # Reads slower than the chunks are read (each chunk waits for the client, not
                # for the store), so the deadline keeps moving: the get is served whole.
                async with client.open_get("b", "big") as stream:
                    async for piece in stream:
                        got += len(piece)
                        await trio.sleep(TIMEOUT_S / 20)
                assert got == len(data)
                # Then a client that stops reading after its first piece.
                with pytest.raises((RequestTimeout, ConnectionLost)) as stopped:
                    async with client.open_get("b", "big") as stream:
                        async for _ in stream:
                            await trio.sleep(3 * TIMEOUT_S)
                if isinstance(stopped.value, RequestTimeout):
                    # The node's words (a ConnectionLost: it was cut mid-write, and could not
                    # tell): the client's stall, not the read's.
                    assert "client read nothing" in str(stopped.value)
            assert await _outcomes(nodes[0]) == ["ok", RequestTimeout.code]
            nursery.cancel_scope.cancel()
