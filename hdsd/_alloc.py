"""Allocator tuning for the chunk pipeline's large, short-lived buffers.

Sealing a 1 MiB chunk allocates and frees a few buffers of about 1 MiB (zstd output, the
ciphertext, the payload). With glibc's defaults such buffers are mmap'ed fresh or handed back
to the OS by heap trimming, so every seal pays ~256 page faults and the kernel zeroing them per
MiB: measured here, one-thread seal drops from ≈1000 to ≈390 MiB/s. Keeping them in the heap
removes that cost. This is a process-wide setting, so no library code applies it by itself:
the process owner (``hdsd serve``, the CLI's transfers, benchmarks, a host program of the
client that asks for it: ``hdsd.tune_allocator()``) calls :func:`tune_allocator` once.

A foundation module (not the pipeline's): a client process, whose receiving side pays the same
page faults for each megabyte read, must tune without importing the pipeline's codecs.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

__all__ = ["glibc", "tune_allocator"]

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


@cache
def glibc() -> ctypes.CDLL | None:
    """The process's own C library if it is glibc (``mallopt``, ``malloc_trim``), else None.

    Opened as the symbols the process has loaded already (``dlopen(NULL)``), not looked up by
    ``ctypes.util.find_library``, which runs ``ldconfig -p``: 3-7 ms at every CLI get's start."""
    if not sys.platform.startswith("linux"):
        return None
    # Imported here: ``import hdsd`` re-exports this module's functions and must not pay for
    # ctypes (~9 ms, a client command's start-up) unless one is called.
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
        # Only glibc has gnu_get_libc_version; musl's mallopt is a no-op that returns 0.
        libc.gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator(
    *,
    mmap_threshold: int = 16 << 20,
    trim_threshold: int = 128 << 20,
    top_pad: int = 16 << 20,
) -> bool:
    """Make glibc malloc serve chunk-sized buffers from the heap and keep freed memory.

    Costs up to about *trim_threshold* of freed memory kept per malloc arena instead of being
    returned to the OS. Returns ``True`` if glibc accepted every setting, ``False`` on other C
    libraries or platforms (nothing is changed then).
    """
    libc = glibc()
    if libc is None:
        return False
    import ctypes

    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = True
    for param, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold),
        (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad),
    ):
        ok = mallopt(param, value) == 1 and ok
    return ok
