"""Migrating a store of log format 1 (names in clear) to format 2 (names sealed).

Offline (``hdsd store migrate``, the node stopped: the store's lock is taken). The old log is
read record by record and committed into a new store beside it, ``<store>.migrating``, through
the ordinary write path (so the new log and index are exactly what a node would have written,
names sealed). Records of tenants without a key (shredded) are dropped: they are garbage, and
their names are exactly what must not stay in clear. Then, crash-safe by renames:

1. the new store is closed (fsynced) and ``MIGRATED`` written in it (fsynced);
2. ``<store>`` is renamed ``<store>.format1-old``; 3. ``<store>.migrating`` is renamed
   ``<store>``; 4. the old one is deleted.

A crash before 1 leaves a ``.migrating`` without ``MIGRATED``: the next run starts over. A
crash after 1 is finished by the next run (the renames that are left, then the delete). The
node refuses to start while ``<store>.format1-old`` exists (:func:`migration_pending`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import IntegrityError, StoreError, StoreInUse
from .._packing import PackError, unpackb
from . import _format as F
from ._fs import FileSystem
from ._log import Frame, scan_segment
from ._records import ChunkRecord, decode_record
from ._recovery import _with_map, list_segments
from ._sealed import Sealing
from ._store import LOCK_NAME, Store
from ._version import Version

__all__ = ["MigrateReport", "migrate_store", "migration_pending"]

MIGRATING_SUFFIX = ".migrating"
OLD_SUFFIX = ".format1-old"
DONE_MARK = "MIGRATED"
_BATCH_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class MigrateReport:
    migrated: bool  # False: the store was of the current format already
    chunks: int = 0
    versions: int = 0
    dropped: int = 0  # records of tenants without a key (shredded), not carried over
    segments_read: int = 0


def migration_pending(directory: str | os.PathLike[str]) -> str | None:
    """A one-line refusal if a migration of the store at *directory* did not finish."""
    path = os.path.abspath(os.fspath(directory))
    if os.path.exists(path + OLD_SUFFIX):
        return (f"a migration of the store {path} did not finish ({path + OLD_SUFFIX} is "
                "still there): run hdsd store migrate again")
    return None


def _format_of(fs: FileSystem, directory: str) -> int | None:
    numbers = list_segments(fs, directory)
    if not numbers:
        return None
    fd = fs.open_read(os.path.join(directory, F.segment_name(numbers[0])))
    try:
        raw = fs.pread(fd, F.SEGMENT_HEADER_SIZE, 0)
    finally:
        fs.close(fd)
    return int(F.SEGMENT_HEADER.unpack(raw)[1])


def _decode_v1(frame: Frame) -> ChunkRecord | Version:
    if frame.kind == F.KIND_CHUNK:
        record = decode_record(frame.kind, frame.body)
        assert isinstance(record, ChunkRecord)
        return record
    if frame.kind == F.KIND_VERSION:
        try:
            return Version.from_wire(unpackb(frame.body))
        except PackError as exc:
            raise IntegrityError(f"malformed format-1 version record: {exc}") from None
    raise StoreError(f"record kind {frame.kind} in a format-1 log: not migratable")


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(path: str) -> None:
    """Steps 2-4 (whichever are left) once the new store is complete."""
    new, old = path + MIGRATING_SUFFIX, path + OLD_SUFFIX
    parent = os.path.dirname(path)
    if os.path.exists(new):
        if os.path.exists(path):
            os.rename(path, old)
            _sync_dir(parent)
        os.rename(new, path)
        _sync_dir(parent)
    if os.path.exists(old):
        shutil.rmtree(old)
        _sync_dir(parent)
    mark = os.path.join(path, DONE_MARK)
    if os.path.exists(mark):
        os.unlink(mark)
        _sync_dir(path)


def migrate_store(directory: str | os.PathLike[str], sealing: Sealing, *,
                  segment_bytes: int = 256 << 20,
                  progress: Callable[[int], None] | None = None) -> MigrateReport:
    """Rewrite the format-1 store at *directory* sealed (see the module docstring).
    :class:`StoreInUse` if a node has it open. Idempotent: a finished store is left alone."""
    path = os.path.abspath(os.fspath(directory))
    new = path + MIGRATING_SUFFIX
    if os.path.exists(os.path.join(new, DONE_MARK)):
        _finish(path)  # a crash after the new store was complete
        return MigrateReport(migrated=True)
    if os.path.exists(path + OLD_SUFFIX) and not os.path.exists(path):
        raise StoreError(f"{path} is missing and {path + OLD_SUFFIX} is there without a "
                         f"complete {new}: restore {path + OLD_SUFFIX} as {path} and run "
                         "hdsd store migrate again")
    fs = FileSystem()
    if _format_of(fs, path) != 1:
        if os.path.exists(path + OLD_SUFFIX):
            _finish(path)
        return MigrateReport(migrated=False)
    lock_fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                      0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUse(f"the store at {path} is open in another process: stop the node "
                             "first") from None
        shutil.rmtree(new, ignore_errors=True)  # an earlier run that did not complete
        report = _copy(fs, path, new, sealing, segment_bytes, progress)
        fd = os.open(os.path.join(new, DONE_MARK), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _sync_dir(new)
    finally:
        os.close(lock_fd)
    _finish(path)
    return report


def _copy(fs: FileSystem, path: str, new: str, sealing: Sealing, segment_bytes: int,
          progress: Callable[[int], None] | None) -> MigrateReport:
    chunks = versions = dropped = 0
    numbers = list_segments(fs, path)
    with Store.open(new, sealing=sealing, segment_bytes=segment_bytes) as store:
        batch: list[ChunkRecord | Version] = []
        size = 0

        def flush() -> None:
            nonlocal batch, size
            if batch:
                store.commit_sync(batch)
            batch, size = [], 0

        def on_batch(frames: list[Frame]) -> None:
            nonlocal chunks, versions, dropped, size
            for frame in frames:
                record = _decode_v1(frame)
                if sealing.seal_for(record.tenant) is None:
                    dropped += 1
                    continue
                batch.append(record)
                if isinstance(record, ChunkRecord):
                    chunks += 1
                    size += len(record.payload)
                else:
                    versions += 1
                    size += 256
            if size >= _BATCH_BYTES:
                flush()

        for i, number in enumerate(numbers):
            def scan(buf: object, end: int) -> None:
                scan_segment(buf, F.SEGMENT_HEADER_SIZE, end, on_batch)  # type: ignore[arg-type]
            _with_map(fs, os.path.join(path, F.segment_name(number)), scan)
            if progress is not None:
                progress(i + 1)
        flush()
    return MigrateReport(migrated=True, chunks=chunks, versions=versions, dropped=dropped,
                         segments_read=len(numbers))
