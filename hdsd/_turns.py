"""Turns handed out in arrival order: the queue behind the node's request room and a
session's outbox room.

Both once woke every waiter at each release and let whichever the scheduler ran first take
the room; under a steady overload some waited release after release until they timed out
(docs/performance.md, *fairsend*). Each now queues here and is given its turn in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio


class TurnQueue:
    """Callers waiting for a turn, first come first served. The owner decides when there is
    room and calls :meth:`give`; a caller given a turn it cannot use (cancelled as it came)
    hands it back through *abandoned* (the owner's "pass it on")."""

    __slots__ = ("_abandoned", "_waiting")

    def __init__(self, abandoned: Callable[[], None]) -> None:
        self._waiting: deque[trio.Event] = deque()
        self._abandoned = abandoned

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self) -> None:
        """Queue until :meth:`give` reaches this caller. Cancelled, it leaves the queue —
        or, if its turn came meanwhile, hands it back (the next one's now)."""
        turn = trio.Event()
        self._waiting.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():
                self._abandoned()
            else:
                self._waiting.remove(turn)
            raise

    def give(self) -> None:
        """The turn of the caller waiting longest (the queue must not be empty)."""
        self._waiting.popleft().set()
