"""A bounded cache of segment read descriptors.

A node keeps reading old segments (gets, scrub, repair), and a descriptor per segment once read
would grow with the data: ~4,000 per TB of 256 MiB segments, until the process meets its
``LimitNOFILE``. The cache keeps at most *limit* descriptors open, least recently used closed
first. A descriptor a reader is using is never closed under it: an eviction then only takes it
out of the cache, and the last reader closes it (a closed number could be reused by another
open at once and a ``pread`` on it would read the wrong file). So the process holds at most
*limit* + (readers at that moment, bounded by the thread pool) segment descriptors.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from . import _format as F
from ._fs import FileSystem

__all__ = ["DEFAULT_READ_FDS", "ReadFds"]

#: Enough for the segments a busy node reads at once; each is one pread per request.
DEFAULT_READ_FDS = 64


class _Entry:
    __slots__ = ("evicted", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.evicted = False


class ReadFds:
    """Read descriptors of a store's segments, at most *limit* kept open when unused."""

    def __init__(self, fs: FileSystem, directory: str, limit: int = DEFAULT_READ_FDS) -> None:
        if limit < 1:
            raise ValueError(f"read descriptor limit must be >= 1, not {limit}")
        self._fs = fs
        self._dir = directory
        self.limit = limit
        self._lock = threading.Lock()
        self._open: OrderedDict[int, _Entry] = OrderedDict()
        self.opened = 0  # descriptors opened so far (a hit rate for status and tests)
        self.evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    @contextmanager
    def use(self, segment: int) -> Iterator[int]:
        """The read descriptor of *segment* while the block runs (opened if needed;
        ``FileNotFoundError`` if the segment is gone)."""
        with self._lock:
            entry = self._open.get(segment)
            if entry is None:
                entry = _Entry(self._fs.open_read(
                    os.path.join(self._dir, F.segment_name(segment))))
                self.opened += 1
                self._open[segment] = entry
                self._evict()
            else:
                self._open.move_to_end(segment)
            entry.users += 1
        try:
            yield entry.fd
        finally:
            with self._lock:
                entry.users -= 1
                close = entry.evicted and entry.users == 0
            if close:
                self._fs.close(entry.fd)

    def _evict(self) -> None:
        # Under the lock. The least recently used first; one in use is handed to its readers.
        while len(self._open) > self.limit:
            _, old = self._open.popitem(last=False)
            self.evictions += 1
            if old.users:
                old.evicted = True
            else:
                self._fs.close(old.fd)

    def pop(self, segment: int, default: int | None = None) -> int | None:
        """Take *segment*'s descriptor out of the cache (its segment is being deleted) and
        return it for the caller to close; *default* if none is cached or a reader still
        holds it (that reader closes it)."""
        with self._lock:
            entry = self._open.pop(segment, None)
            if entry is None:
                return default
            if entry.users:
                entry.evicted = True
                return default
            return entry.fd

    def close_all(self) -> None:
        with self._lock:
            entries, self._open = list(self._open.values()), OrderedDict()
            for entry in entries:
                entry.evicted = True  # one in use is closed by its last reader
            idle = [e.fd for e in entries if not e.users]
        for fd in idle:
            self._fs.close(fd)
