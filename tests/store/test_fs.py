"""The file-system helpers of the log (``hdsd.store._fs``) on a real file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hdsd.store import FileSystem, Store, _writer
from tests.helpers.sealing import SEALING

from ._util import chunk_id, chunked_put


@pytest.mark.parametrize(("offset", "length"), [
    (0, 3 << 20),              # aligned: written with O_DIRECT where the file system takes it
    (4096, (1 << 20) + 4096),  # aligned, not a whole number of zero blocks
    (100, 10_000),             # unaligned: through the page cache
    (8192, (1 << 20) + 100),   # an aligned head, an unaligned tail
])
def test_write_zeros_zeroes_exactly_the_range(tmp_path: Path, offset: int,
                                              length: int) -> None:
    path = tmp_path / "seg"
    size = 5 << 20
    path.write_bytes(b"\xa5" * size)
    fs = FileSystem()
    fd = fs.open_write(str(path))
    try:
        fs.write_zeros(fd, offset, length)
        fs.fsync(fd)
    finally:
        fs.close(fd)
    data = path.read_bytes()
    assert len(data) == size
    assert data[:offset] == b"\xa5" * offset
    assert data[offset:offset + length] == bytes(length)
    assert data[offset + length:] == b"\xa5" * (size - offset - length)
    assert os.stat(path).st_size == size


class _CountingFS(FileSystem):
    def __init__(self) -> None:
        self.dropped: list[tuple[int, int]] = []

    def drop_cache(self, fd: int, offset: int, length: int) -> None:
        assert length > 0
        self.dropped.append((offset, length))
        super().drop_cache(fd, offset, length)


@pytest.mark.parametrize("segment_bytes", [256 << 20, 96 << 10])
def test_the_log_drops_its_page_cache_behind_the_head_and_still_reads_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, segment_bytes: int) -> None:
    monkeypatch.setattr(_writer, "CACHE_BEHIND", 64 << 10)
    monkeypatch.setattr(_writer, "DROP_STEP", 16 << 10)
    fs = _CountingFS()
    parts = [bytes([i]) * (20 << 10) for i in range(1, 25)]
    with Store.open(tmp_path, fs=fs, sealing=SEALING, segment_bytes=segment_bytes) as store:
        for i, part in enumerate(parts):
            store.commit_sync(chunked_put("t", "b", f"k{i}", i + 1, "n", [part]))
        # Dropped oldest first, in steps, and never the last CACHE_BEHIND bytes: about
        # everything written but them (20 KiB records: 480 KiB in all).
        assert fs.dropped
        assert (400 << 10) - (64 << 10) <= sum(n for _, n in fs.dropped) <= 480 << 10
        for part in parts:  # what was dropped is read back from the disk, whole
            assert store.read_chunk("t", chunk_id(part)) == part
