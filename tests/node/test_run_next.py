"""A job the connection's reader runs itself (``WireSession.run_next``: a lone small put) must
never raise: what it raises would end the reader, and with it the connection and every other
request on it. A bug inside it — an exception that is no ``HdsdError`` — fails that put alone
(answered ``internal``); the reader reads on, on the same connection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from hdsd import AsyncClient, HdsdError, NotFound
from hdsd.node import load_node_config, serve_node
from tests.helpers.cluster import init_cluster
from tests.node.test_small_puts import _Tasks


async def test_a_bug_in_a_put_run_by_the_reader_fails_that_put_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_cluster(tmp_path)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            coordinator = nodes[0]
            async with AsyncClient(tmp_path / "client.toml", site="dc1", retries=0) as client:
                await client.put("b", "warm", b"x")
                session = client._session

                async def buggy(*args: object) -> None:
                    raise RuntimeError("a bug in the write path (test)")

                seen = _Tasks().watch(monkeypatch)
                with monkeypatch.context() as patched:
                    patched.setattr(coordinator.small_writes, "write", buggy)
                    with pytest.raises(HdsdError, match="internal error on the node") as failed:
                        await client.put("b", "lost", os.urandom(4096))
                assert failed.value.code == "internal"
                data = os.urandom(4096)
                await client.put("b", "kept", data)
                trio.lowlevel.remove_instrument(seen)
                # Both run by the reader (no task, no runner), on the one connection.
                assert (seen.groups, seen.runner_groups, seen.group_tasks, seen.per_put) == (
                    2, 0, 0, 0)
                assert client._session is session and session is not None
                assert not session.closed
                assert await client.get("b", "kept") == data
                with pytest.raises(NotFound):
                    await client.stat("b", "lost")
            assert coordinator._requests_in_flight == {}
            assert not any(coordinator.tenancy._reserved.values())
            nursery.cancel_scope.cancel()
