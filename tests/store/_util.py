"""Shared helpers for the store tests: record builders and a fault-injecting file system."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from hdsd.store import ChunkRecord, FileSystem, Version


def chunk_id(seed: str | bytes) -> bytes:
    data = seed.encode() if isinstance(seed, str) else seed
    return hashlib.blake2b(data, digest_size=32).digest()


def inline_version(tenant: str, bucket: str, key: str, hlc: int, node: str, data: bytes,
                   *, request_id: bytes = b"") -> Version:
    return Version(tenant, bucket, key, hlc, node, size=len(data),
                   content_hash=hashlib.blake2b(data, digest_size=32).digest(),
                   chunks=(chunk_id(data),), inline=data, request_id=request_id)


def chunked_put(tenant: str, bucket: str, key: str, hlc: int, node: str,
                parts: list[bytes]) -> list[ChunkRecord | Version]:
    """The records of a chunked put: its chunk records, then the version naming them."""
    chunks = [ChunkRecord(tenant, chunk_id(p), p) for p in parts]
    v = Version(tenant, bucket, key, hlc, node, size=sum(map(len, parts)),
                content_hash=hashlib.blake2b(b"".join(parts), digest_size=32).digest(),
                chunks=tuple(c.chunk_id for c in chunks))
    return [*chunks, v]


def tombstone(tenant: str, bucket: str, key: str, hlc: int, node: str) -> Version:
    return Version(tenant, bucket, key, hlc, node, size=0, content_hash=b"", tombstone=True)


@dataclass
class _Write:
    offset: int
    old: bytes
    new: bytes


@dataclass
class FaultyFS(FileSystem):
    """A real file system with injected faults.

    * ``fail_fdatasync_at=n``: the n-th fdatasync (1-based, counting every file) raises EIO;
    * ``enospc_write_at=n``: the n-th pwrite writes half its bytes, then raises ENOSPC
      (pwrites count only into ``.seg`` files: spares are written by a background thread);
    * ``enospc_create_after=n``: creating a file after the n-th raises ENOSPC;
    * ``fail_write_at=n``: the n-th pwrite raises EIO;
    * ``gate``: when set to an Event, fdatasync waits for it (to hold a batch in flight);
    * :meth:`crash`: a power cut — writes since their file's last fdatasync are undone, then
      a random part of each is kept (whole, a prefix, some 512-byte sectors, or nothing).
    """

    fail_fdatasync_at: int | None = None
    enospc_write_at: int | None = None
    fail_write_at: int | None = None
    enospc_create_after: int | None = None
    gate: threading.Event | None = None
    at_gate: threading.Event = field(default_factory=threading.Event)  # an fdatasync waits
    fdatasyncs: int = 0
    writes: int = 0
    creates: int = 0
    _paths: dict[int, str] = field(default_factory=dict)
    _unsynced: dict[str, list[_Write]] = field(default_factory=dict)

    def open_write(self, path: str, *, create: bool = False) -> int:
        if create:
            self.creates += 1
            if self.enospc_create_after is not None and self.creates > self.enospc_create_after:
                raise OSError(errno.ENOSPC, "injected: no space left on device")
        fd = super().open_write(path, create=create)
        self._paths[fd] = path
        return fd

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        for fd, path in self._paths.items():
            if path == src:
                self._paths[fd] = dst
        if src in self._unsynced:
            self._unsynced[dst] = self._unsynced.pop(src)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if not self._paths[fd].endswith(".seg"):  # spare segments are made in the background
            super().pwrite(fd, data, offset)
            return
        self.writes += 1
        if self.writes == self.fail_write_at:
            raise OSError(errno.EIO, "injected write error")
        old = self.pread(fd, len(data), offset)
        self._unsynced.setdefault(self._paths[fd], []).append(_Write(offset, old, bytes(data)))
        if self.writes == self.enospc_write_at:
            super().pwrite(fd, data[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, parts: Sequence[bytes], offset: int) -> None:
        # One write of the joined bytes: every fault above applies to a batch as before.
        self.pwrite(fd, b"".join(parts), offset)

    def fdatasync(self, fd: int) -> None:
        self.fdatasyncs += 1
        if self.gate is not None:
            self.at_gate.set()
            self.gate.wait()
        if self.fdatasyncs == self.fail_fdatasync_at:
            raise OSError(errno.EIO, "injected fdatasync failure")
        super().fdatasync(fd)
        self._unsynced.pop(self._paths[fd], None)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._unsynced.pop(self._paths[fd], None)

    def truncate(self, fd: int, length: int) -> None:
        super().truncate(fd, length)
        # A truncation we then fdatasync replaces whatever was written past it.
        writes = self._unsynced.get(self._paths[fd], [])
        self._unsynced[self._paths[fd]] = [w for w in writes if w.offset + len(w.new) <= length]

    def crash(self, rng: random.Random) -> None:
        """Simulate a power cut after the store was abandoned (see the class docstring)."""
        for path, writes in self._unsynced.items():
            if not os.path.exists(path):
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                for w in reversed(writes):
                    os.pwrite(fd, w.old + bytes(len(w.new) - len(w.old)), w.offset)
                for w in writes:
                    mode = rng.choice(["none", "whole", "prefix", "sectors"])
                    if mode == "whole":
                        os.pwrite(fd, w.new, w.offset)
                    elif mode == "prefix":
                        os.pwrite(fd, w.new[: rng.randrange(len(w.new) + 1)], w.offset)
                    elif mode == "sectors":
                        for s in range(0, len(w.new), 512):
                            if rng.random() < 0.5:
                                os.pwrite(fd, w.new[s:s + 512], w.offset + s)
            finally:
                os.close(fd)
        self._unsynced.clear()
