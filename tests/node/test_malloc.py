"""The node's allocator settings: glibc arenas capped unless the operator chose, trim works,
and the node's account of its memory."""

from __future__ import annotations

import platform
import sqlite3
import threading

import pytest
import trio
import trio.testing

from hdsd.node._malloc import (
    limit_arenas,
    memory_status,
    timed_trim,
    trim,
    trim_every,
    worth_trimming,
)
from hdsd.pipeline import tune_allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def test_the_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_arenas() is False


@glibc
def test_on_glibc_arenas_are_capped_and_memory_is_trimmed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_arenas() is True
    # 80 MiB of malloc'd (not mmapped) blocks freed at once: trim gives some back.
    junk = [bytes(4000) + bytes([i % 256]) for i in range(20_000)]
    del junk
    assert trim() is True


def test_memory_status_splits_resident_memory() -> None:
    st = memory_status()
    assert st["rss"] > 10 << 20 and st["python_blocks"] > 0
    if platform.libc_ver()[0] == "glibc":
        m = st["malloc"]
        assert m["in_use"] > 0 and m["free"] >= 0 and m["heap"] > 0
        held = [bytes(8000) + bytes([i % 256]) for i in range(4000)]  # ~32 MiB in the heap
        assert memory_status()["malloc"]["in_use"] >= m["in_use"] + (30 << 20)
        del held


@glibc
def test_memory_status_counts_pythons_arenas_and_sqlites_bytes() -> None:
    # Python's small objects live in obmalloc's 1 MiB arenas, mapped apart from glibc's heaps:
    # a million of them need more arenas, and the status says so.
    before = memory_status()["python_arenas"]
    assert before["arenas"] >= 1 << 20 and 0 < before["blocks"] <= before["arenas"]
    # More blocks than the arenas have room for, plus 10 MiB: in a process that ran other
    # tests first, freed objects left room in its arenas for many new ones (a fixed 13 MiB
    # once fitted in whole, and the arenas did not grow).
    room = before["arenas"] - before["blocks"]
    small = [(i, i + 1) for i in range((room + (10 << 20)) // 64 + 1)]  # 64-byte tuples
    after = memory_status()["python_arenas"]
    assert after["blocks"] >= before["blocks"] + room + (10 << 20)
    assert after["arenas"] >= before["arenas"] + (10 << 20)
    del small
    # SQLite's own count moves with a connection's page cache (2 MiB by default here).
    base = memory_status()["sqlite"]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x BLOB)")
    db.executemany("INSERT INTO t VALUES (?)", ((bytes(1000),) for _ in range(5000)))
    assert memory_status()["sqlite"] >= base + (1 << 20)
    db.close()
    assert memory_status()["sqlite"] < base + (1 << 20)


async def test_trim_every_trims_on_schedule_off_the_event_loop(
        mock_clock: trio.testing.MockClock) -> None:
    # The clock moves only when the test moves it: each trim must come at its interval, not
    # before, and run in a worker thread (malloc_trim holds the arenas' locks for ms).
    send, receive = trio.open_memory_channel[threading.Thread](10)

    def fake_trim() -> None:
        trio.from_thread.run_sync(send.send_nowait, threading.current_thread())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trim_every, 5.0, fake_trim, lambda: True)
        await trio.testing.wait_all_tasks_blocked()  # started: its beat counts from now
        for _ in range(3):
            mock_clock.jump(4.9)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.WouldBlock):
                receive.receive_nowait()
            mock_clock.jump(0.1)
            assert await receive.receive() is not threading.main_thread()
        nursery.cancel_scope.cancel()


async def test_a_beat_with_nothing_freed_trims_nothing_and_starts_no_thread(
        mock_clock: trio.testing.MockClock) -> None:
    trims: list[threading.Thread] = []
    asked: list[threading.Thread] = []
    worth = [False]
    trimmed = threading.Event()

    def trim() -> None:
        trims.append(threading.current_thread())
        trimmed.set()

    def fake_worth() -> bool:
        asked.append(threading.current_thread())
        return worth[0]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trim_every, 5.0, trim, fake_worth)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            mock_clock.jump(5.0)
            await trio.testing.wait_all_tasks_blocked()
        assert len(asked) == 3 and trims == []
        assert all(t is threading.main_thread() for t in asked)  # no thread to find out
        worth[0] = True
        mock_clock.jump(5.0)
        # The beat waits for its worker thread, which may not have run yet when every task
        # is blocked: wait for the trim itself (bounded), not for the tasks.
        assert await trio.to_thread.run_sync(trimmed.wait, 60.0)
        assert len(asked) == 4 and len(trims) == 1 and trims[0] is not threading.main_thread()
        nursery.cancel_scope.cancel()


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()


@glibc
def test_a_timed_trim_gives_freed_memory_back_and_says_so() -> None:
    # As the node runs: chunk-sized buffers kept in the heap (tune_allocator), so freeing
    # them alone returns nothing to the system; the trim does.
    assert tune_allocator()
    held = [bytearray(1 << 20) for _ in range(64)]
    for b in held:
        b[::4096] = b"\x01" * len(b[::4096])  # touch every page: resident
    keep = held[-1]  # a live block above the rest, as in a busy heap: no top trim
    del held
    assert timed_trim() is True
    trim_state = memory_status()["trim"]
    assert trim_state["count"] >= 1 and trim_state["ms"] >= 0
    assert trim_state["rss_before"] - trim_state["rss_after"] >= 32 << 20
    del keep


@glibc
def test_a_trim_is_worth_it_only_once_memory_was_freed_since_the_last() -> None:
    assert tune_allocator()
    held = [bytearray(1 << 20) for _ in range(16)]
    for b in held:
        b[::4096] = b"\x01" * len(b[::4096])  # resident
    keep = bytearray(1 << 20)  # above them: freeing them cannot shrink the heap's top
    timed_trim()
    assert worth_trimming() is False  # nothing freed since
    skipped = memory_status()["trim"]["skipped"]
    assert skipped >= 1
    del held  # 16 MiB in use at the trim, free now: glibc's free bytes grew
    assert worth_trimming() is True
    timed_trim()
    assert worth_trimming() is False
    del keep
