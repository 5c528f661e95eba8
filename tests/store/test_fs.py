"""The file-system helpers of the log (``hdsd.store._fs``) on a real file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hdsd.store._fs import FileSystem


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
