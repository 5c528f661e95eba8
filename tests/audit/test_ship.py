"""Shipping to the other site: the receiver keeps a verified copy and refuses a broken chain;
the shipper resumes from its durable cursor and falls back to the next node of the site."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TypeVar

import nacl.signing
import pytest
import trio
import trio.testing

from hdsd import AuditChainBroken, Unavailable
from hdsd.audit import AuditCopies, AuditLog, AuditShipper, copy_dir, verify_log
from hdsd.audit._segments import Reader
from hdsd.cluster import Layout, NodeInfo
from hdsd.wire import AuditShip, Request

from ._util import make_log

R = TypeVar("R")

LAYOUT = Layout(sites=("a", "b"), nodes=(
    NodeInfo("n1", "a", "127.0.0.1", 1), NodeInfo("m1", "b", "127.0.0.1", 2),
    NodeInfo("m2", "b", "127.0.0.1", 3)))


def _copies(root: Path) -> AuditCopies:
    return AuditCopies(root / "audit", segment_bytes=1024, retention_days=365)


def _batches(directory: Path, until: int, size: int) -> list[tuple[int, bytes, list[bytes]]]:
    reader, out, after = Reader(directory), [], 0
    while after < until:
        prev_seq, prev_hash, bodies = reader.read_after(after, until, size, 1 << 20)
        out.append((prev_seq, prev_hash, bodies))
        after = prev_seq + len(bodies)
    return out


async def test_copy_is_verifiable_and_resends_are_idempotent(tmp_path: Path) -> None:
    audit = make_log(tmp_path / "src", 25, segment_bytes=1024)
    copies = _copies(tmp_path / "dst")
    try:
        batches = _batches(audit.directory, audit.durable[0], 7)
        for prev_seq, prev_hash, bodies in batches:
            await copies.receive("n1", audit.verify_key, prev_seq, prev_hash, bodies)
        # The reply to the last batch was lost: the shipper sends it again.
        tail = await copies.receive("n1", audit.verify_key, *batches[-1])
        assert tail == audit.durable
    finally:
        copies.close()
    assert verify_log(copy_dir(tmp_path / "dst" / "audit", "n1"), audit.verify_key).records == 25


async def test_receiver_refuses_gaps_forks_forgeries_and_new_keys(tmp_path: Path) -> None:
    audit = make_log(tmp_path / "src", 10)
    batches = _batches(audit.directory, audit.durable[0], 4)
    copies = _copies(tmp_path / "dst")
    try:
        await copies.receive("n1", audit.verify_key, *batches[0])
        with pytest.raises(AuditChainBroken, match="gap"):
            await copies.receive("n1", audit.verify_key, *batches[2])
        prev_seq, prev_hash, bodies = batches[1]
        with pytest.raises(AuditChainBroken, match="differs"):
            await copies.receive("n1", audit.verify_key, prev_seq, bytes(32), bodies)
        with pytest.raises(AuditChainBroken):
            await copies.receive("n1", audit.verify_key, prev_seq, prev_hash,
                                 [bodies[1], bodies[0], *bodies[2:]])
        other = bytes(nacl.signing.SigningKey.generate().verify_key)
        with pytest.raises(AuditChainBroken, match="pinned"):
            await copies.receive("n1", other, prev_seq, prev_hash, bodies)
        # None of that was stored: the honest batch still continues the chain.
        await copies.receive("n1", audit.verify_key, *batches[1])
    finally:
        copies.close()


class _FakeLink:
    """Delivers AuditShip straight to each target's AuditCopies; *down* nodes are unreachable."""

    def __init__(self, root: Path) -> None:
        self.copies = {name: _copies(root / name) for name in ("m1", "m2")}
        self.down: set[str] = set()

    async def call(self, node: str, request: Request[R]) -> R:
        if node in self.down:
            raise Unavailable(f"{node} is down")
        msg = request
        assert isinstance(msg, AuditShip)
        seq, digest = await self.copies[node].receive(msg.origin, msg.verify_key, msg.prev_seq,
                                                      msg.prev_hash, msg.records)
        return request.decode_reply({"seq": seq, "hash": digest})

    def reachable(self, node: str) -> bool:
        return node not in self.down


async def test_shipper_prefers_the_first_node_falls_back_and_resumes(tmp_path: Path) -> None:
    link = _FakeLink(tmp_path)
    audit = AuditLog(tmp_path / "n1" / "audit", "n1")
    try:
        for i in range(5):
            audit.record("c", "writer", "t", "PutStart", "b", f"k{i}", "", 1, 0, "ok", "?")
        await trio.to_thread.run_sync(audit.checkpoint_and_wait)
        shipper = AuditShipper(audit, link, LAYOUT, site="a")
        with trio.fail_after(10):
            with trio.move_on_after(10):
                await shipper.flush()
        assert not shipper.pending()
        assert shipper.cursors["m1"][0] == audit.durable[0] and "m2" not in shipper.cursors

        link.down.add("m1")  # a partition: the next records go to m2, from its own start
        audit.record("c", "writer", "t", "DeleteRequest", "b", "k0", "", 0, 0, "ok", "?")
        await trio.to_thread.run_sync(audit.checkpoint_and_wait)
        with trio.fail_after(10):
            with trio.move_on_after(10):
                await shipper.flush()
        assert shipper.cursors["m2"][0] == audit.durable[0]
    finally:
        audit.close()
    # A new shipper (a restart) reads the durable cursors: m1 catches up from where it stopped.
    link.down.clear()
    audit = AuditLog(tmp_path / "n1" / "audit", "n1")
    try:
        await trio.to_thread.run_sync(audit.checkpoint_and_wait)
        shipper = AuditShipper(audit, link, LAYOUT, site="a")
        assert shipper.cursors["m1"][0] < audit.durable[0]
        with trio.fail_after(10):
            with trio.move_on_after(10):
                await shipper.flush()
        assert shipper.cursors["m1"][0] == audit.durable[0]
    finally:
        audit.close()
        for c in link.copies.values():
            c.close()
    for name in ("m1", "m2"):
        copy = copy_dir(tmp_path / name / "audit", "n1")
        assert verify_log(copy, audit.verify_key).records == 6


class _CountingLink(_FakeLink):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.batches: list[int] = []

    async def call(self, node: str, request: Request[R]) -> R:
        msg = request
        assert isinstance(msg, AuditShip)
        self.batches.append(len(msg.records))
        return await super().call(node, request)


async def test_steady_traffic_ships_one_batch_per_interval_and_a_backlog_back_to_back(
        tmp_path: Path) -> None:
    link = _CountingLink(tmp_path)
    audit = AuditLog(tmp_path / "n1" / "audit", "n1")
    try:
        # A backlog of three batches: shipped without waiting the (long) interval between them.
        for i in range(2500):
            audit.record("c", "writer", "t", "PutStart", "b", f"k{i}", "", 1, 0, "ok", "?")
        await trio.to_thread.run_sync(audit.checkpoint_and_wait)
        shipper = AuditShipper(audit, link, LAYOUT, site="a", interval=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(shipper.run)
            with trio.fail_after(60):
                while shipper.pending():
                    await trio.sleep(0.01)
            assert link.batches[:2] == [1000, 1000] and sum(link.batches) == audit.durable[0]
            nursery.cancel_scope.cancel()

        # Steady traffic: records becoming durable one by one, while the shipper runs. Each
        # is shipped within an interval, in batches of many (not one batch per record).
        link.batches.clear()
        shipper = AuditShipper(audit, link, LAYOUT, site="a", interval=0.5)
        async with trio.open_nursery() as nursery:
            await nursery.start(shipper.run)
            t0 = trio.current_time()
            for i in range(100):
                audit.record("c", "writer", "t", "PutStart", "b", f"s{i}", "", 1, 0, "ok", "?")
                await trio.to_thread.run_sync(audit.wait_durable)
                await trio.sleep(0.01)
            elapsed = trio.current_time() - t0
            with trio.fail_after(60):
                while shipper.pending():
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        # At most one batch per interval (plus the first, at once): however slow this machine
        # ran the loop above, never one per record.
        assert len(link.batches) <= elapsed / 0.5 + 2
        assert sum(link.batches) >= 100
    finally:
        audit.close()
        for c in link.copies.values():
            c.close()


def test_a_batch_not_taken_is_read_again_without_parsing_the_segment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The other site down: the shipper asks for the same batch every interval. Finding it
    # again by parsing the whole segment each time cost a core with a large segment.
    audit = make_log(tmp_path / "src", 40)
    expected = _batches(audit.directory, 40, 10)
    reader = Reader(audit.directory)
    first = reader.read_after(0, 40, 10, 1 << 20)
    assert reader.read_after(10, 40, 10, 1 << 20)[2]  # the next batch is taken

    located: list[int] = []
    locate = Reader._locate

    def counting(self: Reader, after_seq: int) -> object:
        located.append(after_seq)
        return locate(self, after_seq)

    monkeypatch.setattr(Reader, "_locate", counting)
    second = reader.read_after(10, 40, 10, 1 << 20)
    for _ in range(3):  # ... and not taken: the same batch, from where it began
        assert reader.read_after(10, 40, 10, 1 << 20) == second
    assert located == []
    assert second[0] == 10 and len(second[2]) == 10
    assert first == expected[0] and second == expected[1]
    # Another position than the last batch's start or end is still found by parsing.
    assert reader.read_after(0, 40, 10, 1 << 20) == first
    assert located == [0]


class _SignallingLink(_FakeLink):
    """Sets a thread event at each batch delivered (the test waits in a worker thread: the
    trio clock is frozen)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.delivered = threading.Event()

    async def call(self, node: str, request: Request[R]) -> R:
        reply = await super().call(node, request)
        self.delivered.set()
        return reply


async def test_an_idle_shipper_ships_a_new_record_when_it_becomes_durable(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    # The trio clock never moves here: neither the interval nor the safety beat can end, so
    # only the audit writer's bell can have the new record shipped.
    link = _SignallingLink(tmp_path)
    audit = AuditLog(tmp_path / "n1" / "audit", "n1")
    try:
        audit.record("c", "writer", "t", "PutStart", "b", "k0", "", 1, 0, "ok", "?")
        await trio.to_thread.run_sync(audit.checkpoint_and_wait)
        shipper = AuditShipper(audit, link, LAYOUT, site="a", interval=3600)
        await shipper.flush()  # up to date: run() starts by waiting for new records
        assert not shipper.pending()
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(shipper.run)
            link.delivered.clear()
            audit.record("c", "writer", "t", "PutStart", "b", "k1", "", 1, 0, "ok", "?")
            shipped = await trio.to_thread.run_sync(link.delivered.wait, 60.0)
            assert shipped, "the new durable record was not shipped"
            assert trio.current_time() == t0
            while shipper.pending():  # the cursor is saved after the delivery
                await trio.testing.wait_all_tasks_blocked()
            assert shipper.cursors["m1"][0] == audit.durable[0]
            nursery.cancel_scope.cancel()
        assert audit.on_durable is None
    finally:
        audit.close()
        for c in link.copies.values():
            c.close()
