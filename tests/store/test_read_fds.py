"""The segment read descriptors of a store stay bounded however many segments are read."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hdsd.store import ChunkRecord, Store
from hdsd.store import _format as F
from hdsd.store._fds import ReadFds
from hdsd.store._fs import FileSystem
from tests.helpers.sealing import SEALING

SEGMENT = 64 << 10


def _open_fds() -> int:
    """Descriptors of log segments open in this process (the index's SQLite connections,
    one per reading thread, are not what this bounds)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").endswith(".seg")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return n


def _fill(store: Store, n: int) -> list[tuple[bytes, bytes]]:
    """*n* chunks of 40 KiB: about one segment each."""
    out = []
    for i in range(n):
        payload = i.to_bytes(4, "big") * (10 << 10)
        cid = i.to_bytes(32, "big")
        store.commit_sync([ChunkRecord("t", cid, payload)])
        out.append((cid, payload))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_reading_many_segments_keeps_descriptors_within_the_bound(tmp_path: Path) -> None:
    bound = 8
    with Store.open(tmp_path / "s", segment_bytes=SEGMENT, read_fds=bound,
                    sealing=SEALING) as store:
        chunks = _fill(store, 120)
        assert store.statistics().head_segment > 100  # many segments to read
        before = _open_fds()
        most = 0
        for _ in range(2):
            for cid, payload in chunks:
                assert store.read_chunk("t", cid) == payload
                most = max(most, _open_fds() - before)
        assert most <= bound
        # Readers in threads at once: at most the bound plus one in use per reader.
        errors: list[BaseException] = []
        peaks: list[int] = []

        def reader(k: int) -> None:
            try:
                for cid, payload in chunks[k::4]:
                    assert store.read_chunk("t", cid) == payload
                    peaks.append(_open_fds() - before)
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert max(peaks) <= bound + 4
    assert _open_fds() == 0  # closing the store released every one


def test_an_evicted_descriptor_stays_open_for_the_reader_using_it(tmp_path: Path) -> None:
    fs = FileSystem()
    for n in range(1, 5):
        (tmp_path / F.segment_name(n)).write_bytes(bytes([n]) * 16)
    cache = ReadFds(fs, str(tmp_path), limit=1)
    with cache.use(1) as held:
        with cache.use(2):
            pass  # evicts segment 1 from the cache while it is in use
        with cache.use(3):
            pass
        assert os.pread(held, 1, 0) == b"\x01"  # still the right file, still open
    with pytest.raises(OSError):
        os.fstat(held)  # the last reader closed it
    assert len(cache) == 1 and cache.evictions >= 2
    fd = cache.pop(3)
    assert fd is not None
    fs.close(fd)
    assert cache.pop(3) is None
    cache.close_all()


def test_the_index_connection_of_a_thread_that_ended_is_closed(tmp_path: Path) -> None:
    # trio retires idle worker threads and starts new ones: each reads the index through its
    # own SQLite connection, which must not outlive it (memory and descriptors would grow).
    with Store.open(tmp_path / "s", segment_bytes=SEGMENT, sealing=SEALING) as store:
        chunks = _fill(store, 3)

        def read() -> None:
            assert store.read_chunk("t", chunks[0][0]) == chunks[0][1]

        for _ in range(30):
            t = threading.Thread(target=read)
            t.start()
            t.join()
        index = store._index
        assert len(index._readers) <= 1  # the main thread's, if it read; the ended ones' closed
        read()
        assert len(index._readers) == 1
