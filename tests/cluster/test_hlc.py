from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hdsd.cluster import HybridClock


def test_monotonic_when_wall_clock_goes_backwards() -> None:
    walls = iter([1000, 1000, 999, 500, 1001])
    clock = HybridClock(wall_ms=lambda: next(walls))
    stamps = [clock.now() for _ in range(5)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    assert HybridClock.wall_ms(stamps[-1]) == 1001


def test_floor_survives_restart() -> None:
    first = HybridClock(wall_ms=lambda: 5000)
    last = max(first.now() for _ in range(10))
    # After a restart with a wall clock that lags, stamps still move forward.
    second = HybridClock(floor=last, wall_ms=lambda: 10)
    assert second.now() > last


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1 << 40)), max_size=50))
def test_observe_then_now_is_greater(ops: list[tuple[bool, int]]) -> None:
    clock = HybridClock(wall_ms=lambda: 1)
    seen = 0
    for observe, value in ops:
        if observe:
            clock.observe(value)
            seen = max(seen, value)
        else:
            stamp = clock.now()
            assert stamp > seen
            seen = stamp
