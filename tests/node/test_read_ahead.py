"""ReadAhead: a get's chunks read and opened in worker threads ahead of the sink, without a
task of its own — in order, at most *depth* ahead, one read at a time, a chunk missing or
damaged here read from another replica, and the shared limiter's tokens always given back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio

from hdsd import IntegrityError, NotFound, StoreClosedError
from hdsd.node import ReadPaths
from hdsd.pipeline import pipeline_limiter
from hdsd.store import ChunkRecord
from hdsd.wire import FetchChunk

REPLICAS = {"dc1": ["dc1-n1"], "dc2": ["dc2-n1"]}
IDS = [bytes([i]) * 32 for i in range(10)]


class _Store:
    """Chunk *i*'s payload is ``b"plain-i"``; *fail* maps a chunk to what reading it raises;
    *gate*, when set, holds every read until it is opened."""

    def __init__(self, fail: dict[bytes, Exception] | None = None,
                 gate: threading.Event | None = None) -> None:
        self.fail = fail or {}
        self.gate = gate
        self.reads: list[bytes] = []
        self.running = 0
        self.most_running = 0
        self.committed: list[ChunkRecord] = []
        self._lock = threading.Lock()

    def read_chunk_view(self, tenant: str, chunk_id: bytes) -> memoryview:
        with self._lock:
            self.reads.append(chunk_id)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            if chunk_id in self.fail:
                raise self.fail[chunk_id]
            return memoryview(b"plain-%d" % chunk_id[0])
        finally:
            with self._lock:
                self.running -= 1

    async def commit(self, records: list[ChunkRecord]) -> None:
        self.committed += records


class _Peers:
    def __init__(self) -> None:
        self.asked: list[bytes] = []

    async def call(self, node: str, request: Any) -> Any:
        assert isinstance(request, FetchChunk) and node == "dc2-n1"
        self.asked.append(request.chunk_id)
        return {"payload": b"plain-%d" % request.chunk_id[0]}


def _reads(store: _Store, peers: _Peers | None = None) -> ReadPaths:
    layout = SimpleNamespace(layout_id="L", other_site=lambda s: "dc2" if s == "dc1" else "dc1")
    return ReadPaths(config=cast(Any, SimpleNamespace(name="dc1-n1", site="dc1")),
                     store=cast(Any, store), peers=cast(Any, peers or _Peers()),
                     replicator=cast(Any, SimpleNamespace(replicas_for=lambda *a: REPLICAS)),
                     layout=lambda: cast(Any, layout), rebuilding=lambda: False,
                     checking=lambda: False)


CODEC: Any = SimpleNamespace(open=lambda chunk_id, payload: bytes(payload))


async def _until(check: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not check():
            await trio.sleep(0.005)


async def test_chunks_come_in_order_at_most_depth_ahead_one_read_at_a_time() -> None:
    store = _Store()
    ahead = _reads(store).read_ahead("t", "b", "k", IDS, CODEC, 3)
    assert ahead is not None
    await _until(lambda: len(store.reads) == 3)
    await trio.sleep(0.05)
    assert len(store.reads) == 3  # nothing taken yet: three ahead, no more
    got = []
    for _ in IDS:
        got.append(await ahead.next())
        assert len(store.reads) <= len(got) + 3
    ahead.close()
    assert got == [b"plain-%d" % i for i in range(10)]
    assert store.reads == IDS and store.most_running == 1
    await _until(lambda: pipeline_limiter().borrowed_tokens == 0)


class _Steps(trio.abc.Instrument):
    """Counts the times the current task is scheduled again: 0 when it never passed."""

    def __init__(self) -> None:
        self.count = 0
        self._task = trio.lowlevel.current_task()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += task is self._task


async def test_chunks_read_already_are_taken_without_a_scheduler_pass() -> None:
    # A streamed get's sink takes the chunks its read-ahead has ready without passing
    # through the scheduler (~0.75 passes per MiB). A chunk not read yet is waited for.
    gate = threading.Event()
    store = _Store()
    ahead = _reads(store).read_ahead("t", "b", "k", IDS[:4], CODEC, 3)
    assert ahead is not None
    await _until(lambda: len(store.reads) == 3)
    await trio.sleep(0.05)  # the third read's completion ran on the loop too
    store.gate = gate  # the fourth chunk's read is held
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        got = [await ahead.next() for _ in range(3)]
        assert steps.count == 0
        gate.set()
        got.append(await ahead.next())
        assert steps.count >= 1
    finally:
        trio.lowlevel.remove_instrument(steps)
        ahead.close()
    assert got == [b"plain-%d" % i for i in range(4)]
    await _until(lambda: pipeline_limiter().borrowed_tokens == 0)


async def test_a_chunk_missing_here_is_read_from_another_replica_and_kept() -> None:
    store = _Store(fail={IDS[1]: NotFound("gone"), IDS[2]: IntegrityError("rotten")})
    peers = _Peers()
    ahead = _reads(store, peers).read_ahead("t", "b", "k", IDS[:4], CODEC, 2)
    assert ahead is not None
    got = [await ahead.next() for _ in range(4)]
    ahead.close()
    assert got == [b"plain-%d" % i for i in range(4)]
    assert peers.asked == [IDS[1], IDS[2]]
    # The missing copy is repaired here; the damaged one is left to repair (scrub).
    assert [r.chunk_id for r in store.committed] == [IDS[1]]


async def test_another_error_is_raised_in_its_chunks_turn() -> None:
    store = _Store(fail={IDS[2]: StoreClosedError("closed")})
    ahead = _reads(store).read_ahead("t", "b", "k", IDS[:4], CODEC, 3)
    assert ahead is not None
    assert await ahead.next() == b"plain-0"
    assert await ahead.next() == b"plain-1"
    with pytest.raises(StoreClosedError):
        await ahead.next()
    ahead.close()
    await _until(lambda: pipeline_limiter().borrowed_tokens == 0)


async def test_a_cancelled_wait_and_a_close_give_every_token_back() -> None:
    gate = threading.Event()
    store = _Store(gate=gate)
    ahead = _reads(store).read_ahead("t", "b", "k", IDS, CODEC, 3)
    assert ahead is not None
    with trio.move_on_after(0.05):
        await ahead.next()  # the read is held: the wait is cancelled
    ahead.close()
    assert pipeline_limiter().borrowed_tokens == 1  # the running read still holds its token
    gate.set()
    await _until(lambda: pipeline_limiter().borrowed_tokens == 0)
    await trio.sleep(0.05)
    assert store.reads == IDS[:1]  # closed: nothing more was read


async def test_a_read_waits_for_a_token_when_the_limiter_has_none() -> None:
    limiter = pipeline_limiter()
    holders = [object() for _ in range(limiter.total_tokens)]
    for h in holders:
        limiter.acquire_on_behalf_of_nowait(h)
    store = _Store()
    ahead = _reads(store).read_ahead("t", "b", "k", IDS[:2], CODEC, 2)
    assert ahead is not None

    async def give_back() -> None:
        await trio.sleep(0.05)
        assert store.reads == []  # no token: nothing started
        for h in holders:
            limiter.release_on_behalf_of(h)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(give_back)
        assert [await ahead.next(), await ahead.next()] == [b"plain-0", b"plain-1"]
    ahead.close()
    await _until(lambda: limiter.borrowed_tokens == 0)


async def test_a_node_that_is_not_a_replica_reads_no_chunk_ahead() -> None:
    reads = _reads(_Store())
    reads.config = cast(Any, SimpleNamespace(name="dc1-n9", site="dc1"))
    assert reads.read_ahead("t", "b", "k", IDS, CODEC, 3) is None
