"""Injected storage faults: fail-stop after an fdatasync or write error, ENOSPC refusals,
closed stores, cancellation, and the single-opener lock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from hdsd import DiskFullError, StoreClosedError, StoreFailedError
from hdsd._errors import StoreError
from hdsd.store import Store, Version
from tests.helpers.sealing import SEALING

from ._util import FaultyFS, inline_version


def v(i: int, data: bytes = b"data") -> Version:
    return inline_version("t", "b", f"k{i}", i + 1, "n", data)


async def test_fdatasync_failure_stops_the_store_for_good(tmp_path: Path) -> None:
    fs = FaultyFS(fail_fdatasync_at=3)  # one fdatasync per batch: the third batch fails
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        await store.commit([v(0)])
        store.commit_sync([v(1)])
        with pytest.raises(StoreFailedError, match="fdatasync"):
            await store.commit([v(2)])
        syncs = fs.fdatasyncs
        for i in range(3, 6):  # never retried, never acknowledged again, async or sync
            with pytest.raises(StoreFailedError):
                await store.commit([v(i)])
            with pytest.raises(StoreFailedError):
                store.commit_sync([v(i)])
        with pytest.raises(StoreFailedError):  # even a record that is already durable
            store.commit_sync([v(0)])
        assert fs.fdatasyncs == syncs
        stats = store.statistics()
        assert stats.failed and stats.commits == 2
        assert store.current("t", "b", "k1") == v(1)  # reads keep working
        assert store.current("t", "b", "k2") is None  # never indexed
    with Store.open(tmp_path, sealing=SEALING) as store:  # restart: what was durable is there
        assert store.current("t", "b", "k0") == v(0)
        assert store.current("t", "b", "k1") == v(1)
        store.commit_sync([v(9)])


async def test_write_error_stops_the_store(tmp_path: Path) -> None:
    fs = FaultyFS(fail_write_at=2)  # one log write per batch: the second fails
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        await store.commit([v(0)])
        with pytest.raises(StoreFailedError, match="write"):
            await store.commit([v(1)])
        with pytest.raises(StoreFailedError):
            await store.commit([v(2)])


async def test_enospc_refuses_the_batch_and_keeps_going(tmp_path: Path) -> None:
    fs = FaultyFS(enospc_write_at=2)
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        await store.commit([v(0)])
        with pytest.raises(DiskFullError):
            await store.commit([v(1, b"x" * 5000)])  # half of it reached the file
        assert not store.statistics().failed
        assert store.current("t", "b", "k1") is None
        await store.commit([v(2)])  # space is back: accepted again, after the cut-back point
        assert store.current("t", "b", "k2") == v(2)
    # no stale half-batch left in the log
    with Store.open(tmp_path, verify=True, sealing=SEALING) as store:
        assert store.current("t", "b", "k1") is None
        assert store.current("t", "b", "k0") == v(0)
        assert store.current("t", "b", "k2") == v(2)
        assert not store.statistics().torn_tails


async def test_enospc_creating_a_segment(tmp_path: Path) -> None:
    fs = FaultyFS(enospc_create_after=1)  # the first segment only (spares fail, too)
    with Store.open(tmp_path, fs=fs, segment_bytes=4096, sealing=SEALING) as store:
        await store.commit([v(0, b"a" * 3000)])
        with pytest.raises(DiskFullError):
            await store.commit([v(1, b"b" * 3000)])  # needs a new segment
        fs.enospc_create_after = None
        await store.commit([v(2, b"c" * 3000)])
        assert store.statistics().segments == 2
    with Store.open(tmp_path, segment_bytes=4096, sealing=SEALING) as store:
        assert [store.current("t", "b", f"k{i}") is not None for i in range(3)] == [
            True, False, True]


async def test_closed_store_refuses_everything(tmp_path: Path) -> None:
    store = Store.open(tmp_path, sealing=SEALING)
    await store.commit([v(0)])
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosedError):
        await store.commit([v(1)])
    with pytest.raises(StoreClosedError):
        store.commit_sync([v(1)])
    with pytest.raises(StoreClosedError):
        store.current("t", "b", "k0")


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING), pytest.raises(StoreError, match="open in another"):
        Store.open(tmp_path, sealing=SEALING)


async def test_cancelled_commit_leaves_the_store_working(tmp_path: Path) -> None:
    gate = threading.Event()
    fs = FaultyFS()
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        fs.gate = gate  # hold the next fdatasync so the commit is in flight when cancelled
        scope = trio.CancelScope()

        async def doomed() -> None:
            with scope:
                await store.commit([v(0)])
                raise AssertionError("acknowledged while its fdatasync is held")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(doomed)
                await trio.to_thread.run_sync(fs.at_gate.wait)
                scope.cancel()
        assert scope.cancelled_caught
        gate.set()
        with trio.fail_after(10):
            await store.commit([v(1)])
        # The cancelled commit was written anyway (it was in the batch): the outcome of a
        # cancelled commit is unknown to its caller, never half-applied.
        assert store.current("t", "b", "k0") == v(0)
