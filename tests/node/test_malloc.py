"""The node's allocator settings: glibc arenas capped unless the operator chose, trim works."""

from __future__ import annotations

import platform

import pytest

from hdsd.node._malloc import limit_arenas, trim

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
