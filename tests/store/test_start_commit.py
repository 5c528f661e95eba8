"""``Store.start_commit``: queue a commit now, wait for it later (or never) without a task."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio

from hdsd._errors import StoreClosedError, StoreFailedError
from hdsd.store import ChunkRecord, Store, Version
from hdsd.store._wake import SIGNALLED
from tests.helpers.sealing import SEALING

from ._util import FaultyFS, chunked_put, inline_version


def v(i: int) -> Version:
    return inline_version("t", "b", f"k{i}", i + 1, "n", f"value {i}".encode())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_wait_returns_once_durable_and_readable(tmp_path: Path) -> None:
    gate = threading.Event()
    fs = FaultyFS()
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        fs.gate = gate
        ticket = store.start_commit([v(0)])
        await trio.to_thread.run_sync(fs.at_gate.wait)  # queued at once, syncing now
        assert store._writer.fsyncs == 0  # not durable yet: the wait is real
        gate.set()
        with trio.fail_after(10):
            await ticket.wait()
        assert store.current("t", "b", "k0") == v(0)
        await ticket.wait()  # a spent ticket: returns at once
        ticket.abandon()  # and abandoning it is a no-op


@pytest.mark.parametrize("signalled_first", [False, True])
async def test_abandoned_tickets_are_written_and_leak_nothing(tmp_path: Path,
                                                              signalled_first: bool) -> None:
    gate = threading.Event()
    fs = FaultyFS()
    before = _open_fds()
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        fs.gate = gate
        tickets = [store.start_commit([v(i)]) for i in range(4)]
        await trio.to_thread.run_sync(fs.at_gate.wait)
        if signalled_first:
            gate.set()
            with trio.fail_after(10):
                await store.commit([v(9)])  # every earlier batch was signalled before it
        for ticket in tickets:
            ticket.abandon()
        gate.set()
        with trio.fail_after(10):
            await store.commit([v(10)])
        assert [store.current("t", "b", f"k{i}") for i in range(4)] == [v(i) for i in range(4)]
    assert _open_fds() == before


async def test_nothing_new_to_write_needs_no_writer(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        await store.commit([v(0)])
        commits = store.statistics().commits
        with trio.fail_after(10):
            await store.start_commit([v(0)]).wait()
        assert store.statistics().commits == commits


def test_errors_before_queueing_raise_at_start(tmp_path: Path) -> None:
    store = Store.open(tmp_path, sealing=SEALING)
    store.close()
    with pytest.raises(StoreClosedError):
        store.start_commit([v(0)])


async def test_waiting_after_the_signal_reuses_the_descriptor(tmp_path: Path) -> None:
    before = _open_fds()
    with Store.open(tmp_path, sealing=SEALING) as store:
        ticket = store.start_commit([v(0)])
        with trio.fail_after(10):
            await store.commit([v(1)])  # v(0)'s batch was signalled before this one's
            assert ticket._pending is not None and ticket._pending.waker.state == SIGNALLED
            fd = ticket._pending.waker.fd
            await ticket.wait()
        assert store._writer.wakers._free[-1] == fd  # back in the pool, count reset
        with trio.fail_after(10):
            await store.commit([v(2)])  # reuses it: a stale count would wake it too early
        assert store.current("t", "b", "k0") == v(0)
    assert _open_fds() == before


async def test_encoded_in_a_thread_then_queued(tmp_path: Path) -> None:
    # A bulk writer encodes in a worker thread and queues on the event loop: the same
    # durability as start_commit, and records already held are dropped while encoding.
    gate = threading.Event()
    fs = FaultyFS()
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        await store.commit([v(0)])
        # A read waits for the index (encoding does not: a record acknowledged a moment ago
        # may still be on its way there, and is then simply written again).
        assert store.current("t", "b", "k0") == v(0)
        encoded = await trio.to_thread.run_sync(store.encode_commit, [v(0), v(1), v(1), v(2)])
        assert len(encoded) == 2  # v(0) is held, v(1) is named twice
        fs.gate = gate
        synced = store._writer.fsyncs
        ticket = store.start_encoded(encoded)
        await trio.to_thread.run_sync(fs.at_gate.wait)
        assert store._writer.fsyncs == synced  # queued, not durable yet
        gate.set()
        with trio.fail_after(10):
            await ticket.wait()
        assert store.current("t", "b", "k1") == v(1)
        assert store.current("t", "b", "k2") == v(2)
        nothing = await trio.to_thread.run_sync(store.encode_commit, [v(1), v(2)])
        assert len(nothing) == 0
        await store.start_encoded(nothing).wait()  # nothing to write: returns at once
    with pytest.raises(StoreClosedError):
        store.start_encoded(encoded)


def test_a_known_version_is_not_written_twice_across_the_hlc_shortcut(tmp_path: Path) -> None:
    """A version above every indexed hlc skips the index lookup (it cannot be there); one at
    or below is still looked up, so a version committed again is never written again, also
    after a reopen (the highest hlc comes back from the index)."""
    def commit(store: Store, versions: list[Version]) -> None:
        store.commit_sync(versions)
        store._writer.wait_indexed()  # the ack comes before the index update

    with Store.open(tmp_path, sealing=SEALING) as store:
        assert store._index.has_version("t", b"\0" * 16, 1, "n") is False
        commit(store, [v(5)])
        writes = store._writer.commits
        commit(store, [v(5)])  # the same version: known, nothing queued
        commit(store, [v(2)])  # below the highest hlc, not indexed: written
        assert store._writer.commits == writes + 1
        highest = store._index.indexed_max_hlc
        assert highest == v(5).hlc
    with Store.open(tmp_path, sealing=SEALING) as store:
        assert store._index.indexed_max_hlc == highest
        writes = store._writer.commits
        commit(store, [v(5), v(2)])
        commit(store, [v(7)])
        assert store._writer.commits == writes + 1
        assert store._index.indexed_max_hlc == v(7).hlc


async def test_versions_encoded_ahead_are_queued_after_chunks_in_one_batch(
        tmp_path: Path) -> None:
    # (the coordinator's pair write: its versions sealed before the peer's request, the
    # chunks they name encoded once it is on its way)
    records = chunked_put("t", "b", "big", 5, "n", [b"one" * 1000, b"two" * 1000])
    *chunks, version = records
    assert isinstance(version, Version)
    with Store.open(tmp_path, sealing=SEALING) as store:
        sealed = store.encode_commit([version])
        with trio.fail_after(10):
            await store.start_encoded(sealed, [c for c in chunks if isinstance(c, ChunkRecord)]
                                      ).wait()
        assert store._writer.batches == 1
        assert store.current("t", "b", "big") == version
        assert all(store.has_chunk("t", c.chunk_id) for c in chunks
                   if isinstance(c, ChunkRecord))


async def test_a_bell_rings_once_each_commit_is_over(tmp_path: Path) -> None:
    # A peer connection's acknowledger waits on one bell for all its commits: each rings it
    # once durable, and only then reads as done (the state is set before the ring).
    gate = threading.Event()
    fs = FaultyFS()
    before = _open_fds()
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        bell = store.bell()
        fs.gate = gate
        tickets = [store.start_commit([v(i)], bell) for i in range(3)]
        await trio.to_thread.run_sync(fs.at_gate.wait)
        assert not any(t.done() for t in tickets)  # not durable yet: not done
        with pytest.raises(RuntimeError):
            tickets[0].result()  # never read as durable before it is
        with trio.move_on_after(0.2):
            await bell.wait()
            raise AssertionError("rung before any commit was durable")
        gate.set()
        with trio.fail_after(10):
            while not all(t.done() for t in tickets):
                await bell.wait()
        for t in tickets:
            t.result()
        assert [store.current("t", "b", f"k{i}") for i in range(3)] == [v(i) for i in range(3)]
        # Nothing to write (held already): done at once, without the writer or a ring.
        again = store.start_commit([v(0)], bell)
        assert again.done()
        again.result()
        bell.close()
    assert _open_fds() == before


async def test_a_bell_closed_with_commits_owed_is_closed_by_the_writer(tmp_path: Path) -> None:
    # The acknowledger ends (its connection is gone) with commits still queued: they are
    # written all the same, and the last signal closes the eventfd — never before it, so
    # the writer never writes to a closed (perhaps reused) descriptor.
    gate = threading.Event()
    fs = FaultyFS()
    before = _open_fds()
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        bell = store.bell()
        fs.gate = gate
        tickets = [store.start_commit([v(i)], bell) for i in range(3)]
        await trio.to_thread.run_sync(fs.at_gate.wait)
        for t in tickets:
            t.abandon()
        bell.close()
        assert bell.owed == 3
        assert os.fstat(bell.fd) is not None  # still open: the writer owes it signals
        with pytest.raises(StoreClosedError):
            store.start_commit([v(5)], bell)  # a closed bell takes no commit
        gate.set()
        with trio.fail_after(10):
            await store.commit([v(9)])  # every earlier batch was signalled before it
        assert bell.owed == 0
        assert [store.current("t", "b", f"k{i}") for i in range(3)] == [v(i) for i in range(3)]
    assert _open_fds() == before


async def test_a_failed_commit_rings_its_bell_with_the_error(tmp_path: Path) -> None:
    fs = FaultyFS()
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        fs.fail_fdatasync_at = fs.fdatasyncs + 1
        bell = store.bell()
        ticket = store.start_commit([v(0)], bell)
        with trio.fail_after(10):
            while not ticket.done():
                await bell.wait()
        with pytest.raises(StoreFailedError):
            ticket.result()
        bell.close()
