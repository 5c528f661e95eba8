"""The node's allocator settings: glibc arenas capped unless the operator chose, trim works,
and the node's account of its memory."""

from __future__ import annotations

import platform

import pytest

from hdsd.node._malloc import limit_arenas, memory_status, timed_trim, trim
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
