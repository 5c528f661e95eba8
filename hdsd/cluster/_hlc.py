"""Hybrid logical clock (Kulkarni et al.): 48 bits of wall-clock milliseconds, 16 bits of logical
counter, packed in one 64-bit integer so timestamps sort as integers.

Tolerant of skew: a timestamp received from a peer pushes the clock forward (``observe``), so a
causally later write always gets a greater timestamp even when the local wall clock lags. Never
backwards after a restart: the owner persists ``last()`` (the store's highest stamped HLC is
enough) and passes it as ``floor`` when it starts again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["HybridClock"]

_LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << _LOGICAL_BITS) - 1


class HybridClock:
    def __init__(self, *, floor: int = 0, wall_ms: Callable[[], int] | None = None) -> None:
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = floor
        self._lock = threading.Lock()

    def now(self) -> int:
        """A timestamp greater than every one this clock issued or observed."""
        with self._lock:
            physical = self._wall_ms() << _LOGICAL_BITS
            self._last = physical if physical > self._last else self._last + 1
            return self._last

    def observe(self, remote: int) -> None:
        """Merge a timestamp seen from a peer so our next ``now()`` is greater."""
        with self._lock:
            if remote > self._last:
                self._last = remote

    def last(self) -> int:
        return self._last

    @staticmethod
    def wall_ms(hlc: int) -> int:
        return hlc >> _LOGICAL_BITS
