"""A peer's Replicate of small versions is queued to the replica's log writer by the
connection's reader and answered by the connection's acknowledger, without a task of its own
(``_peer_handlers.replicate_now``, ``Connections._ack_replicates``); a Replicate with chunks, or one
that fails before it is queued, still runs as a task and is answered as before."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from hdsd import AsyncClient, QuorumNotReached
from hdsd.node import load_node_config, serve_node
from hdsd.peers._transfer import replicate_message
from hdsd.store import Version
from hdsd.store._log import check_frame
from hdsd.store._sealed import SealedVersion
from hdsd.wire import Replicate
from tests.helpers.cluster import init_cluster


class _ReplicateTasks(trio.abc.Instrument):
    """Counts the tasks spawned for Replicate requests (``_run_request`` with one as *msg*)."""

    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        frame = getattr(task.coro, "cr_frame", None)
        if (frame is not None and task.name.endswith("._run_request")
                and isinstance(frame.f_locals.get("msg"), Replicate)):
            self.count += 1


def _record_body(node: Any, v: Version) -> bytes:
    """The record body of *v* in *node*'s log."""
    store = node.store
    assert v in store.versions(v.tenant, v.bucket, v.key)  # (and every commit indexed)
    nid = store.name_id(v.tenant, v.bucket, v.key)
    loc = store._index.location_of(SealedVersion(v.tenant, b"", nid, v.hlc, v.node, b"",
                                                 False, b""))
    return bytes(check_frame("segment", loc.offset, store._pread(loc)).body)


async def _settled(node: object) -> None:
    """Until the node has no request in flight (its acknowledger ends each one)."""
    while node._active_requests:  # type: ignore[attr-defined]
        await trio.sleep(0.01)


async def test_small_replicates_take_no_task(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    small = [os.urandom(4096) for _ in range(8)]
    large = os.urandom(200_000)  # above inline_max: its chunk travels in the Replicate
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            replica = nodes[1]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                await client.put("b", "warm", b"x")
                seen = _ReplicateTasks()
                trio.lowlevel.add_instrument(seen)
                for i in range(4):  # lone puts
                    await client.put("b", f"k{i}", small[i])
                async with trio.open_nursery() as puts:  # concurrent ones
                    for i in range(4, 8):
                        puts.start_soon(client.put, "b", f"k{i}", small[i])
                assert seen.count == 0
                await client.put("b", "large", large)
                trio.lowlevel.remove_instrument(seen)
                assert seen.count >= 1  # chunks: the usual task (its body budget)
                await _settled(replica)
                held = {v.key: v for v in replica.store.iter_versions()}
                for i in range(8):  # durable on the replica, readable from it alone
                    assert held[f"k{i}"].inline is not None
                    assert replica.store.current(held["k0"].tenant, "b", f"k{i}") == held[f"k{i}"]
                assert "large" in held
                # Stored as the coordinator sealed them: the same bytes in both sites (sealed
                # twice, the names would differ by their nonce).
                for key in (*(f"k{i}" for i in range(8)), "large"):
                    assert _record_body(replica, held[key]) == _record_body(nodes[0], held[key])
                for i in range(8):
                    assert await client.get("b", f"k{i}") == small[i]
                assert await client.get("b", "large") == large
            nursery.cancel_scope.cancel()


async def test_a_replicate_the_store_refuses_is_answered_by_its_task(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            replica = nodes[1]
            async with AsyncClient(tmp_path / "client.toml", site="dc1", timeout=30) as client:
                await client.put("b", "warm", b"x")
                # The replica's store stopped (fail-stop): nothing may be queued any more, so
                # the reader cannot take the Replicate; its task gets the store's refusal and
                # answers it, and the put is not acknowledged.
                replica.store._writer.failed = "a storage failure (injected by the test)"
                seen = _ReplicateTasks()
                trio.lowlevel.add_instrument(seen)
                try:
                    await client.put("b", "refused", b"y" * 100)
                except QuorumNotReached:
                    pass
                else:
                    raise AssertionError("acknowledged without the replica")
                finally:
                    trio.lowlevel.remove_instrument(seen)
                # (hint replays of the refused version are refused the same way)
                assert seen.count >= 1
                await _settled(replica)
            nursery.cancel_scope.cancel()


async def test_a_replicate_of_versions_held_already_is_answered(tmp_path: Path) -> None:
    # A Replicate the replica holds every version of (a hint replayed after the put went
    # through, a retry) queues nothing: its commit is over at once, without the log writer,
    # so nothing would ring the connection's bell — the reader rings it, and the Reply
    # still comes, in order with the Replicates around it.
    init_cluster(tmp_path)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            coordinator, replica = nodes
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                await client.put("b", "k", b"v" * 100)
                await _settled(replica)
                held = next(v for v in replica.store.iter_versions() if v.key == "k")
                commits = replica.store.statistics().commits
                seen = _ReplicateTasks()
                trio.lowlevel.add_instrument(seen)
                try:
                    for _ in range(3):
                        await coordinator.peers.call("dc2-n1", replicate_message(
                            coordinator.replicator.layout_id, [], [held]))
                    await client.put("b", "k2", b"w" * 100)  # and the next one as usual
                finally:
                    trio.lowlevel.remove_instrument(seen)
                assert seen.count == 0  # answered by the acknowledger, not a task
                assert replica.store.statistics().commits == commits + 1  # k2's alone
                await _settled(replica)
                assert await client.get("b", "k2") == b"w" * 100
            nursery.cancel_scope.cancel()
