"""The C allocator of a long-running node (glibc only; elsewhere these do nothing).

glibc gives each thread that allocates its own arena, up to 8 x cores of them, and returns a
freed block to the system only from the top of an arena. A node's worker threads (trio's
thread cache: started under load, retired after 10 s idle, started again) each allocate and
free 1 MiB chunk buffers in their own arena, so the process's resident memory creeps up with
fragmented arenas long after the data is gone. Two arenas (the usual server setting,
``MALLOC_ARENA_MAX=2``) and a periodic ``malloc_trim`` keep it level.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import cache
from typing import Any

import trio

from .._alloc import glibc

__all__ = ["limit_arenas", "memory_status", "timed_trim", "trim", "trim_every", "worth_trimming"]

log = logging.getLogger("hdsd.node")

_M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2

# The last timed_trim of this process (the allocator is the process's, not a node's).
_last_trim: dict[str, float] = {}
_trims = 0
_trims_skipped = 0
# What worth_trimming compares with: resident and glibc's free bytes after the last trim, each
# lowered to the least seen at a beat since (memory unmapped, free chunks reused) so that
# growth from there counts too.
_low: dict[str, int] = {}
#: A trim is due once resident memory or the allocator's free bytes grew by this much since
#: the last one (less is not worth walking every arena for).
TRIM_WORTH_BYTES = 1 << 20


class _Mallinfo2(ctypes.Structure):
    # glibc >= 2.33's ``struct mallinfo2``: every field a size_t.
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@cache
def _mallinfo2() -> Any:
    libc = glibc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is not None:
        fn.restype = _Mallinfo2
        fn.argtypes = []
    return fn


@cache
def _sqlite_memory_used() -> Any:
    """SQLite's own count of the bytes it has allocated, every connection of the process
    together (``sqlite3_memory_used``): the ``sqlite3`` module has no status API, but it links
    the system's libsqlite3, and a second ``dlopen`` of it is the same library instance."""
    try:
        import sqlite3  # noqa: F401 - loads the library the module's connections use

        lib = ctypes.CDLL("libsqlite3.so.0")
        fn = lib.sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int64
    fn.argtypes = []
    return fn


_ARENAS = re.compile(rb"# arenas allocated current\s*=\s*([\d,]+)")
_BLOCKS = re.compile(rb"# bytes in allocated blocks\s*=\s*([\d,]+)")


def _python_arenas() -> dict[str, int] | None:
    """Python's small-object allocator (obmalloc): its 1 MiB arenas are mapped on their own,
    outside glibc's heaps, so ``malloc`` does not count them. CPython has no public API for
    them; ``_PyObject_DebugMallocStats`` (what ``sys._debugmallocstats`` prints) is written to
    a memory stream and its two totals read back: well under a millisecond, with the GIL."""
    libc = glibc()
    fn = getattr(ctypes.pythonapi, "_PyObject_DebugMallocStats", None)
    if libc is None or fn is None:
        return None
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p),
                                    ctypes.POINTER(ctypes.c_size_t)]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    fn.argtypes = [ctypes.c_void_p]
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return None
    try:
        used = fn(stream)
    finally:
        libc.fclose(stream)  # flushes: buf and size are valid only now
    try:
        text = ctypes.string_at(buf, size.value) if buf else b""
    finally:
        libc.free(buf)
    arenas, blocks = _ARENAS.search(text), _BLOCKS.search(text)
    if not used or arenas is None or blocks is None:
        return None  # PYTHONMALLOC=malloc (or debug): no arenas of its own
    return {"arenas": int(arenas[1].replace(b",", b"")) << 20,
            "blocks": int(blocks[1].replace(b",", b""))}


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def memory_status() -> dict[str, Any]:
    """Where the process's memory is, to tell a leak from the allocator keeping freed memory.

    ``rss``: resident bytes. ``malloc``: glibc's own count over all arenas (``in_use`` by live
    blocks — Python's objects, SQLite's page caches, zstd and TLS buffers —, ``free`` held in
    the arenas but not returned to the system, ``mmapped`` blocks mapped on their own) or None
    on other C libraries. ``python_arenas``: Python's small-object arenas (``arenas`` mapped,
    ``blocks`` of them in use; None without them), mapped apart from glibc's heaps.
    ``sqlite``: the bytes SQLite has allocated (page caches, statements), part of ``malloc``'s
    ``in_use``. ``python_blocks``: live Python allocations (a count); with
    ``PYTHONTRACEMALLOC=1`` in the node's environment, ``python_traced`` gives their bytes."""
    out: dict[str, Any] = {"rss": _rss_bytes(), "python_blocks": sys.getallocatedblocks()}
    fn = _mallinfo2()
    if fn is not None:
        mi = fn()
        out["malloc"] = {"in_use": mi.uordblks + mi.hblkhd, "free": mi.fordblks,
                         "mmapped": mi.hblkhd, "heap": mi.arena,
                         "releasable_top": mi.keepcost}
    else:
        out["malloc"] = None
    out["python_arenas"] = _python_arenas()
    sqlite = _sqlite_memory_used()
    out["sqlite"] = sqlite() if sqlite is not None else None
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out["python_traced"] = {"current": current, "peak": peak}
    if _last_trim:
        out["trim"] = {"count": _trims, "skipped": _trims_skipped, **_last_trim}
    return out


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at *arenas* (call before the threads start), unless the
    operator chose with ``MALLOC_ARENA_MAX``. True if applied."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the free memory at the top of every arena back to the system (a few ms)."""
    libc = glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def timed_trim() -> bool:
    """:func:`trim`, remembering what it gave back and what it cost (``memory.trim`` in the
    node's status): it walks every arena with its lock held, so its time is also a pause of
    the threads that allocate meanwhile."""
    global _trims
    before = _rss_bytes()
    start = time.perf_counter()
    done = trim()
    ms = (time.perf_counter() - start) * 1e3
    after = _rss_bytes()
    info = _mallinfo2()
    _trims += 1
    _last_trim.update(ms=round(ms, 3), rss_before=before or 0, rss_after=after or 0)
    _low.update(rss=after or 0, free=info().fordblks if info is not None else 0)
    return done


def worth_trimming() -> bool:
    """Whether a trim could give back a MiB or more: resident memory grew since the last trim
    (freed pages touched again: the trim's usual harvest), or glibc's free bytes did (memory
    in use at the last trim freed since). A trim gives back only free pages that are resident,
    so with neither, the last one already took them (pages it gave back stay counted as free,
    so ``free`` alone does not shrink after a trim). True when it cannot tell (no glibc, no
    trim yet). Cheap enough for the event loop: a read of ``/proc/self/statm`` and, if that
    did not decide, ``mallinfo2`` (it counts the arenas' free chunks; no system call)."""
    global _trims_skipped
    rss = _rss_bytes()
    info = _mallinfo2()
    if not _low or rss is None or info is None:
        return True
    if rss >= _low["rss"] + TRIM_WORTH_BYTES:
        return True
    free = info().fordblks
    if free >= _low["free"] + TRIM_WORTH_BYTES:
        return True
    _low.update(rss=min(rss, _low["rss"]), free=min(free, _low["free"]))
    _trims_skipped += 1
    return False


async def trim_every(every_s: float, trim: Callable[[], object] = timed_trim,
                     worth: Callable[[], bool] = worth_trimming) -> None:
    """Hand the memory freed since the last time back to the system every *every_s* seconds
    (``[limits] malloc_trim_s``), in a worker thread: ``malloc_trim`` walks every arena and
    gives its free pages back (``madvise``), milliseconds that would otherwise stop the event loop.
    A beat at which nothing was freed (*worth*: :func:`worth_trimming`) trims nothing and
    starts no thread: an idle node paid a worker-thread hop and an arena walk every 5 s.
    Between two trims the allocator keeps the pages that bursts of 1 MiB buffers freed and
    touched again, so the interval bounds how far resident memory stands above what is in
    use (measured: ~13 MiB per 5 s, 20-27 MiB per 60 s under the soak's steady load)."""
    due = trio.current_time()
    while True:
        # On a fixed beat, not every_s after the last trim ended (a trim slowed down by a
        # loaded machine does not shift the next ones); one that overran its beat starts the
        # next at once, never two at a time.
        due = max(due + every_s, trio.current_time())
        await trio.sleep_until(due)
        if worth():
            await trio.to_thread.run_sync(trim)
