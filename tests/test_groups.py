"""single_error and contain: no group holding Cancelled escapes as a group."""

from __future__ import annotations

import pytest
import trio

from hdsd import ConnectionLost
from hdsd._groups import contain, single_error


async def test_an_error_racing_an_outer_cancel_unwinds_as_the_cancel() -> None:
    reached = False
    with trio.CancelScope() as outer:
        with single_error():
            async with trio.open_nursery() as nursery:
                async def child() -> None:
                    await trio.sleep_forever()
                nursery.start_soon(child)
                await trio.sleep(0)
                outer.cancel()
                try:
                    await trio.sleep_forever()
                finally:
                    # An upload failing (client gone) while its connection is being cancelled.
                    raise ConnectionLost("connection closed during the upload")
        reached = True
    assert outer.cancelled_caught and not reached


async def test_single_error_still_unwraps_errors_alone() -> None:
    with pytest.raises(ConnectionLost):
        with single_error():
            async with trio.open_nursery():
                raise ConnectionLost("gone")


def test_contain_splits_what_must_propagate() -> None:
    bug, interrupt = ValueError("bug"), KeyboardInterrupt()
    assert contain(bug) == (None, bug)
    assert contain(interrupt) == (interrupt, None)
    up, kept = contain(BaseExceptionGroup("g", [bug, interrupt]))
    assert isinstance(up, BaseExceptionGroup) and up.exceptions == (interrupt,)
    assert isinstance(kept, ExceptionGroup) and kept.exceptions == (bug,)
