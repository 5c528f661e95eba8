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
import ctypes.util
import logging
import os
import sys
import time
import tracemalloc
from functools import cache
from typing import Any

__all__ = ["limit_arenas", "memory_status", "timed_trim", "trim"]

log = logging.getLogger("hdsd.node")

_M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2

# The last timed_trim of this process (the allocator is the process's, not a node's).
_last_trim: dict[str, float] = {}
_trims = 0


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only: musl and others have no mallopt/malloc_trim
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


class _Mallinfo2(ctypes.Structure):
    # glibc >= 2.33's ``struct mallinfo2``: every field a size_t.
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@cache
def _mallinfo2() -> Any:
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is not None:
        fn.restype = _Mallinfo2
        fn.argtypes = []
    return fn


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
    on other C libraries. ``python_blocks``: live Python allocations (a count); with
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
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out["python_traced"] = {"current": current, "peak": peak}
    if _last_trim:
        out["trim"] = {"count": _trims, **_last_trim}
    return out


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at *arenas* (call before the threads start), unless the
    operator chose with ``MALLOC_ARENA_MAX``. True if applied."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the free memory at the top of every arena back to the system (a few ms)."""
    libc = _libc()
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
    _trims += 1
    _last_trim.update(ms=round(ms, 3), rss_before=before or 0, rss_after=after or 0)
    return done
