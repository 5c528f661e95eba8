"""A lone small get is answered by its connection's reader, without a task of its own (one
scheduler pass fewer); its answer, refusals and audit record are the general path's, and every
other get — a chunked object, several in flight on the connection — still runs as a task."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hdsd import AsyncClient, InvalidRequest, NotFound
from hdsd.audit import read_records
from hdsd.node import load_node_config, serve_node
from hdsd.wire import GetRequest
from tests.helpers.cluster import init_cluster


class _Requests(trio.abc.Instrument):
    """Counts the tasks the nodes spawn to answer a GetRequest (the arguments of a task's
    coroutine are in its frame before it first runs)."""

    def __init__(self) -> None:
        self.n = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        frame = getattr(task.coro, "cr_frame", None)
        if task.name.endswith("._run_request") and frame is not None and isinstance(
                frame.f_locals.get("msg"), GetRequest):
            self.n += 1


async def _tasks_for(coro: object) -> tuple[int, object]:
    seen = _Requests()
    trio.lowlevel.add_instrument(seen)
    try:
        result = await coro  # type: ignore[misc]
    finally:
        trio.lowlevel.remove_instrument(seen)
    return seen.n, result


async def test_a_lone_small_get_is_answered_by_the_reader(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    small, big = os.urandom(4096), os.urandom(300_000)  # big: over inline_max, in chunks
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                info = await client.put("b", "small", small)
                await client.put("b", "small", b"newer")
                await client.put("b", "big", big)
                await client.put("b", "gone", b"x")
                await client.delete("b", "gone")
                # A fresh node asks its peer too until its first comparison tells whether its
                # empty store was new or wiped (and pulls what the peer holds: the puts above
                # may land in that round): only then is its store alone the answer.
                while any(n.rebuilding or n.checking for n in nodes):
                    await trio.sleep(0.05)

                assert await _tasks_for(client.get("b", "small")) == (0, b"newer")
                assert await _tasks_for(client.get("b", "small", version=info.version)) == (
                    0, small)
                assert await _tasks_for(client.get("b", "small", version=info.version,
                                                   offset=100, length=50)) == (0, small[100:150])
                assert await _tasks_for(client.get("b", "small", version=info.version,
                                                   offset=4096)) == (0, b"")
                # Not served by the reader: a chunked object (read in a worker thread, streamed
                # under credit), and every refusal (the general path words it).
                assert await _tasks_for(client.get("b", "big")) == (1, big)
                for key, error in (("gone", NotFound), ("nope", NotFound)):
                    with pytest.raises(error):
                        await client.get("b", key)
                with pytest.raises(InvalidRequest):
                    await client.get("b", "small", offset=10)  # past the end of b"newer"

                # While another request of the connection is in flight (an upload waiting for
                # the rest of its body), gets are tasks, answered concurrently, as before.
                go_on = trio.Event()

                async def body() -> AsyncIterator[bytes]:
                    yield b"a" * 70_000
                    await go_on.wait()
                    yield b"b"

                async def gets() -> list[bytes]:
                    async with trio.open_nursery() as uploads:
                        uploads.start_soon(client.put, "b", "slow", body())
                        await trio.sleep(0.5)  # the upload is in flight on the node
                        out = [await client.get("b", "small", version=info.version)
                               for _ in range(3)]
                        go_on.set()
                    return out

                assert await _tasks_for(gets()) == (3, [small] * 3)
                assert await client.get("b", "slow") == b"a" * 70_000 + b"b"

            # The reader's gets are audited like any: op, outcome and bytes sent.
            await trio.to_thread.run_sync(nodes[0].audit.checkpoint_and_wait)
            records = [r for r in read_records(nodes[0].config.data_dir / "audit")
                    if r.op == "GetRequest"]
            assert [(r.outcome, r.bytes_out) for r in records[:4]] == [
                ("ok", 5), ("ok", 4096), ("ok", 50), ("ok", 0)]
            nursery.cancel_scope.cancel()
