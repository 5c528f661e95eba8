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
from functools import cache

__all__ = ["limit_arenas", "trim"]

log = logging.getLogger("hdsd.node")

_M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2


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
