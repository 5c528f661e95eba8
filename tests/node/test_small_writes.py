"""Small-put groups of different connections that reach their write in the same pass share one
replicated write (``SmallWrites``), and each gets the write's outcome (a failure too), also when
the task that made the write was cancelled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from hdsd import QuorumNotReached
from hdsd.node._handlers import SmallWrites

REPLICAS = {"dc1": ["dc1-n1"], "dc2": ["dc2-n1"]}


@dataclass
class _V:
    name: str
    inline: bytes = b"x" * 100


@dataclass
class _Replicator:
    writes: list[list[str]] = field(default_factory=list)
    hinted: list[list[str]] = field(default_factory=list)
    error: Exception | None = None
    hold: trio.Event | None = None

    async def write(self, replicas: Any, chunks: Any, versions: list[_V]) -> set[str]:
        self.writes.append([v.name for v in versions])
        if self.hold is not None:
            await self.hold.wait()
        await trio.sleep(0.01)
        if self.error is not None:
            raise self.error
        return set()

    async def keep_hints(self, lagging: set[str], versions: list[_V]) -> None:
        self.hinted.append([v.name for v in versions])


@dataclass
class _Node:
    replicator: _Replicator
    active_requests: int = 16


async def _groups(node: _Node, writes: SmallWrites, names: list[list[str]]
                  ) -> dict[str, BaseException | None]:
    out: dict[str, BaseException | None] = {}

    async def group(batch: list[str]) -> None:
        try:
            await writes.write(node, REPLICAS, [_V(n) for n in batch])  # type: ignore[arg-type]
            out[batch[0]] = None
        except Exception as exc:
            out[batch[0]] = exc

    async with trio.open_nursery() as nursery:
        for batch in names:
            nursery.start_soon(group, batch)
    return out


async def test_groups_of_one_pass_share_one_write() -> None:
    node, writes = _Node(_Replicator()), SmallWrites()
    assert await _groups(node, writes, [["a1", "a2"], ["b1"], ["c1"]]) == {
        "a1": None, "b1": None, "c1": None}
    assert [sorted(w) for w in node.replicator.writes] == [["a1", "a2", "b1", "c1"]]
    assert node.replicator.hinted == node.replicator.writes
    # The next pass opens a new write.
    await _groups(node, writes, [["d1"]])
    assert node.replicator.writes[1:] == [["d1"]]


async def test_a_group_alone_on_the_node_writes_at_once() -> None:
    node, writes = _Node(_Replicator(), active_requests=2), SmallWrites()
    await _groups(node, writes, [["a1", "a2"]])
    assert node.replicator.writes == [["a1", "a2"]]


async def test_every_group_gets_the_failure() -> None:
    node, writes = _Node(_Replicator(error=QuorumNotReached("dc2 did not answer"))), \
        SmallWrites()
    out = await _groups(node, writes, [["a1"], ["b1"], ["c1"]])
    assert len(node.replicator.writes) == 1
    assert all(isinstance(exc, QuorumNotReached) for exc in out.values())
    assert len({id(exc) for exc in out.values()}) == 3  # one exception object each


async def test_a_cancelled_first_group_does_not_decide_the_others_outcome() -> None:
    # The group that makes the write belongs to one connection; its client going away must
    # not turn the other connections' puts into failures (a failure inside one request never
    # escapes its connection): the write completes, and every group gets its outcome.
    hold = trio.Event()
    node, writes = _Node(_Replicator(hold=hold)), SmallWrites()
    out: dict[str, BaseException | None] = {}
    scopes = {name: trio.CancelScope() for name in ("a1", "b1")}

    async def group(name: str) -> None:
        with scopes[name]:
            try:
                await writes.write(node, REPLICAS, [_V(name)])  # type: ignore[arg-type]
                out[name] = None
            except Exception as exc:
                out[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(group, "a1")
        nursery.start_soon(group, "b1")
        while not node.replicator.writes:
            await trio.sleep(0.001)
        # Both joined one write; the group that made it (its versions first) is cancelled
        # while the write is under way.
        first, other = node.replicator.writes[0]
        scopes[first].cancel()
        await trio.sleep(0.01)
        hold.set()
    assert out[other] is None
    assert node.replicator.hinted == [[first, other]]  # the write went through, hints kept
