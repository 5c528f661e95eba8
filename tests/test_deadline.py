"""``hdsd._deadline.deadline``: the caller's timeout as a cancel scope ending in RequestTimeout."""

from __future__ import annotations

import pytest
import trio

from hdsd import RequestTimeout
from hdsd._deadline import deadline


async def test_a_body_in_time_is_left_alone() -> None:
    with deadline(10, "too slow") as scope:
        await trio.sleep(0)
    assert not scope.cancelled_caught


async def test_a_late_body_raises_the_callers_words() -> None:
    with pytest.raises(RequestTimeout, match="the thing took too long"):
        with deadline(0.01, "the thing took too long"):
            await trio.sleep(5)


async def test_other_errors_go_through() -> None:
    with pytest.raises(KeyError):
        with deadline(10, "too slow"):
            raise KeyError("k")


async def test_an_outer_cancel_is_not_a_timeout() -> None:
    with trio.move_on_after(0.01) as outer:
        with deadline(10, "too slow"):
            await trio.sleep(5)
    assert outer.cancelled_caught


async def test_the_scope_can_shield_part_of_the_body_up_to_the_same_deadline() -> None:
    with deadline(10, "too slow") as scope:
        with trio.CancelScope(shield=True, deadline=scope.deadline):
            await trio.sleep(0)
    assert scope.deadline < float("inf")


def test_a_negative_timeout_is_refused() -> None:
    async def main() -> None:
        with deadline(-1, "x"):
            pass
    with pytest.raises(ValueError):
        trio.run(main)
