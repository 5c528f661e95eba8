"""A graceful stop waits for the node's requests in flight, and no longer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from hdsd.node import load_node_config, serve_node
from hdsd.node._server import Node
from tests.helpers.cluster import init_cluster


async def test_a_graceful_stop_waits_for_the_requests_in_flight_then_ends(
        tmp_path: Path) -> None:
    init_cluster(tmp_path)
    config = replace(load_node_config(tmp_path / "dc1-n1" / "node.toml"), shutdown_grace_s=600)
    stopped = trio.Event()

    async def serve(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_node(config, task_status=task_status)
        stopped.set()

    with trio.fail_after(60):  # a hang guard: the grace is ten minutes
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(serve)
            node._request_began()  # a request in flight, as a client's is counted
            node.shutdown()
            with trio.move_on_after(1):
                await stopped.wait()
            assert not stopped.is_set()  # the stop waits for it ...
            node._request_done()
            await stopped.wait()  # ... and ends when it ended, not at the grace's end


async def test_a_graceful_stop_with_nothing_in_flight_ends_at_once(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    config = replace(load_node_config(tmp_path / "dc1-n1" / "node.toml"), shutdown_grace_s=600)
    with trio.fail_after(60):  # a hang guard: the grace is ten minutes
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(serve_node, config)
            node._request_began()
            node._request_done()  # a request came and went before the stop
            node.shutdown()
