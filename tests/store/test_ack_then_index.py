"""A commit is acknowledged once durable, before the index update; reads wait for the index.
(The update itself waits a moment — ``INDEX_DELAY_S`` — unless a read asks for it.)

These pin what makes that reordering safe: no read after an acknowledgement misses it, an
index failure after the acknowledgement makes reads refuse (and a reopen replays the batch),
and the per-commit wake-up descriptors are never leaked, even by cancelled commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio
import trio.testing

from hdsd._errors import StoreFailedError
from hdsd.store import Store, Version
from hdsd.store import _writer as writer_module
from hdsd.store._index import AppliedPosition, Location
from tests.helpers.sealing import SEALING

from ._util import FaultyFS, inline_version


def v(i: int) -> Version:
    return inline_version("t", "b", f"k{i}", i + 1, "n", f"value {i}".encode())


class _GatedApply:
    """Replaces ``Index.apply`` of one store: holds each call at a gate, or raises."""

    def __init__(self, store: Store, *, fail: bool = False) -> None:
        self.index = store._index
        self.real = self.index.apply
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail = fail

    def __call__(self, items: Iterable[tuple[object, Location]],
                 applied: AppliedPosition, names: object = (),
                 moved: frozenset[int] = frozenset()) -> None:
        self.entered.set()
        if self.fail:
            raise sqlite3.OperationalError("injected: database or disk is full")
        self.gate.wait()
        self.real(items, applied, names, moved)  # type: ignore[arg-type]


async def test_acknowledged_before_indexed_but_no_read_misses_it(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        gated = _GatedApply(store)
        store._index.apply = gated  # type: ignore[method-assign]
        seen: list[Version | None] = []
        reader = threading.Thread(target=lambda: seen.append(store.current("t", "b", "k0")))
        try:
            with trio.fail_after(10):
                await store.commit([v(0)])  # returns before the index update
            reader.start()
            assert gated.entered.wait(10)  # the read asked for the update, which is held
            reader.join(0.2)
            assert reader.is_alive()  # waiting for the index, not answering without v(0)
        finally:
            gated.gate.set()  # else close() would wait for the held update forever
        reader.join(10)
        assert seen == [v(0)]
        assert store.statistics().records == 1


async def test_index_failure_after_the_ack_refuses_reads_and_reopen_replays(
        tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        with trio.fail_after(10):
            await store.commit([v(0)])
        assert store.current("t", "b", "k0") == v(0)  # indexed (a read asks for it)
        store._index.apply = _GatedApply(store, fail=True)  # type: ignore[method-assign]
        with trio.fail_after(10):
            await store.commit([v(1)])  # durable: acknowledged before the index fails
        with pytest.raises(StoreFailedError, match="missing from the index"):
            store.current("t", "b", "k1")
        with pytest.raises(StoreFailedError, match="missing from the index"):
            store.current("t", "b", "k0")  # no read may pretend k1 was never written
        with pytest.raises(StoreFailedError), trio.fail_after(10):
            await store.commit([v(2)])
        assert store.statistics().failed
    with Store.open(tmp_path, sealing=SEALING) as store:
        assert store.current("t", "b", "k1") == v(1)
        assert store.current("t", "b", "k0") == v(0)
        assert store.current("t", "b", "k2") is None
        assert store.statistics().replayed_records == 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_cancelled_commits_leak_no_wake_up_descriptor(tmp_path: Path) -> None:
    gate = threading.Event()
    fs = FaultyFS()
    before = _open_fds()
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        fs.gate = gate  # every fdatasync waits: the commits are in flight when cancelled
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(store.commit, [v(i)])
                await trio.to_thread.run_sync(fs.at_gate.wait)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
        gate.set()
        with trio.fail_after(10):
            for i in range(8, 12):
                await store.commit([v(i)])
        # The cancelled commits were written anyway; their outcome was only unknown.
        assert [store.current("t", "b", f"k{i}") for i in range(12)] == [v(i) for i in
                                                                         range(12)]
    assert _open_fds() == before


def rv(i: int, request_id: bytes) -> Version:
    return inline_version("t", "b", f"r{i}", i + 1, "n", b"x", request_id=request_id)


async def test_request_lookup_sees_an_ack_before_its_index_update_without_waiting(
        tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        with trio.fail_after(10):
            await store.commit([rv(0, b"first")])
        # Its index update is deferred a moment: let it land, or the gate below holds it (and
        # the writer with it) instead of the next batch's — on a loaded machine it often did.
        store._writer.wait_indexed()
        gated = _GatedApply(store)
        store._index.apply = gated  # type: ignore[method-assign]
        try:
            with trio.fail_after(10):
                await store.commit([rv(1, b"second"), rv(2, b"first")])
            assert not gated.gate.is_set()  # acknowledged, the index update is held
            # Answers while the index update is still held (a wait for it would never end).
            seen: list[Version | None] = []
            lookup = threading.Thread(
                target=lambda: seen.append(store.find_request("t", b"second")))
            lookup.start()
            lookup.join(10)
            assert seen == [rv(1, b"second")]
            assert store.find_request("t", b"first") == rv(0, b"first")  # the first stored
            assert store.find_request("t", b"other") is None
        finally:
            gated.gate.set()
        with trio.fail_after(10):
            await store.commit([v(9)])  # the held batch is indexed once this one is acked
        assert store.find_request("t", b"second") == rv(1, b"second")
        assert store._writer._unindexed_requests == {}


async def test_request_lookup_refuses_after_the_index_lost_an_ack(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        store._index.apply = _GatedApply(store, fail=True)  # type: ignore[method-assign]
        with trio.fail_after(10):
            await store.commit([rv(0, b"lost")])
        with pytest.raises(StoreFailedError):
            store._writer.wait_indexed()  # the (deferred) index update failed
        with pytest.raises(StoreFailedError, match="missing from the index"):
            store.find_request("t", b"lost")


def _count_applies(store: Store) -> list[int]:
    """The sizes of the index transactions *store* makes from now on (one entry each)."""
    calls: list[int] = []
    real = store._index.apply

    def counting(items: Iterable[tuple[object, Location]], applied: AppliedPosition,
                 names: object = (), moved: frozenset[int] = frozenset()) -> None:
        listed = list(items)
        calls.append(len(listed))
        real(listed, applied, names, moved)  # type: ignore[arg-type]

    store._index.apply = counting  # type: ignore[method-assign]
    return calls


async def test_index_updates_wait_a_moment_and_batches_share_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The committer is woken before the index update, which waits INDEX_DELAY_S (or a read):
    # the writer thread does not take the GIL from the task it just woke, and batches
    # acknowledged meanwhile are indexed in one transaction.
    monkeypatch.setattr(writer_module, "INDEX_DELAY_S", 60.0)
    with Store.open(tmp_path, sealing=SEALING) as store:
        calls = _count_applies(store)
        with trio.fail_after(10):
            for i in range(3):
                await store.commit([v(i)])  # three batches acknowledged, none indexed yet
        assert calls == []
        assert store.find_request("t", b"nothing") is None  # the request lookup never waits
        assert calls == []
        assert [store.current("t", "b", f"k{i}") for i in range(3)] == [v(i) for i in range(3)]
        assert calls == [3]  # the read asked: one transaction for the three
        monkeypatch.setattr(writer_module, "INDEX_DELAY_S", 0.05)
        with trio.fail_after(10):
            await store.commit([v(3)])
            while len(calls) < 2:
                await trio.sleep(0.01)  # indexed after the delay, without a read asking
        assert calls == [3, 1]
        with trio.fail_after(10):  # calls counts an apply as it starts: wait for its end
            while store._writer._indexed != store._writer._acked:
                await trio.sleep(0.01)


async def test_a_lone_request_holds_the_index_update_until_it_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # While a node serves one request alone (node_busy), its batches are indexed once that
    # request ended, so the writer thread's index work never competes with its reply on the
    # way; a read in between still gets them at once, batches held together share one
    # transaction, and with company the usual delay applies again.
    monkeypatch.setattr(writer_module, "INDEX_HOLD_MAX_S", 60.0)
    with Store.open(tmp_path, sealing=SEALING) as store:
        calls = _count_applies(store)
        store.node_busy(True)
        with trio.fail_after(10):
            await store.commit([v(0)])
            await store.commit([v(1)])
            await trio.sleep(0.05)  # far past INDEX_DELAY_S: a busy node still holds them
        assert calls == []
        store.node_busy(False)  # the last request ended
        with trio.fail_after(10):
            while not calls:
                await trio.sleep(0.01)
        assert calls == [2]
        store.node_busy(True)
        with trio.fail_after(10):
            await store.commit([v(2)])
        assert store.current("t", "b", "k2") == v(2)  # a read does not wait for idleness
        assert calls == [2, 1]
        store.node_busy(False)  # a second request came: no batch held any more
        with trio.fail_after(10):
            await store.commit([v(3)])
            while len(calls) < 3:
                await trio.sleep(0.01)  # indexed after INDEX_DELAY_S, nobody asking
        assert calls == [2, 1, 1]
        with trio.fail_after(10):  # calls counts an apply as it starts: wait for its end
            while store._writer._indexed != store._writer._acked:
                await trio.sleep(0.01)
