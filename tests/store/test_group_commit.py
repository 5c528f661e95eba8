"""Group commit: concurrent writers share fdatasyncs, and each is woken only when durable."""

from __future__ import annotations

import threading
from pathlib import Path

import trio
import trio.testing

from hdsd.store import Store
from tests.helpers.sealing import SEALING

from ._util import FaultyFS, inline_version


async def test_concurrent_commits_share_one_fdatasync(tmp_path: Path) -> None:
    gate = threading.Event()
    fs = FaultyFS()
    done: list[int] = []
    with Store.open(tmp_path, fs=fs, sealing=SEALING) as store:
        fs.gate = gate
        before = store.statistics()

        async def writer(i: int) -> None:
            await store.commit([inline_version("t", "b", f"k{i}", i + 1, "n", b"x" * 100)])
            done.append(i)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, 0)
                # The first batch (one commit) is being fdatasync'd, held at the gate...
                await trio.to_thread.run_sync(fs.at_gate.wait)
                for i in range(1, 64):
                    nursery.start_soon(writer, i)
                # ...while the 63 others queue behind it.
                await trio.testing.wait_all_tasks_blocked()
                assert done == []  # nobody is acknowledged before their fdatasync
                gate.set()
        stats = store.statistics()
        assert sorted(done) == list(range(64))
        assert stats.commits - before.commits == 64
        # The first commit went alone; the 63 that queued behind it share one fdatasync.
        assert stats.fsyncs - before.fsyncs == 2
        assert stats.batches == 2


async def test_many_trio_tasks_fewer_fsyncs_than_commits(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        async def writer(w: int) -> None:
            for i in range(20):
                await store.commit([inline_version("t", "b", f"{w}-{i}", w * 100 + i + 1, "n",
                                                   b"y" * 64)])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for w in range(16):
                    nursery.start_soon(writer, w)
        stats = store.statistics()
        assert stats.commits == 320
        assert stats.fsyncs < stats.commits
        assert len(store.list_current("t", "b", limit=1000)) == 320


def test_commit_sync_from_many_threads(tmp_path: Path) -> None:
    with Store.open(tmp_path, sealing=SEALING) as store:
        def writer(w: int) -> None:
            for i in range(25):
                store.commit_sync([inline_version("t", "b", f"{w}-{i}", w * 100 + i + 1, "n",
                                                  b"z")])

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.statistics().commits == 200
        assert len(store.list_current("t", "b")) == 200
