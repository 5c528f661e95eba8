"""The node-wide room for client requests in flight (``[limits] max_requests_in_flight``),
given to the connections that wait for it in the order they came.

A connection whose next request finds the node full stops reading (TCP holds its client
back) until a request ends somewhere on the node, and is refused as unavailable (retryable)
if that takes more than a second (see ``Node`` ``before_open``). Waking every waiting
connection at each request's end, as the node did, let the first the scheduler happened to
run take the room and sent the others back to wait: under a steady overload some waited end
after end until refused, while others were served at once. The session's outbox had the same
flaw and refused 54 of 64 concurrent 64 MiB puts (docs/performance.md, *fairsend*). Here each
end gives its room to the connection waiting longest, and a connection that finds others
waiting queues behind them rather than taking room they wait for.

The room is counted from two numbers: the requests the node counts as in flight (from their
task's start) and the turns given to connections that have not yet handed their request on.
"""

from __future__ import annotations

from collections.abc import Callable

from .._turns import TurnQueue


class RequestRoom:
    """Room for ``limit`` requests in flight, as counted by *in_flight*, handed out in order."""

    def __init__(self, limit: int, in_flight: Callable[[], int]) -> None:
        self.limit = limit
        self._in_flight = in_flight
        self._waiting = TurnQueue(self.pass_on)
        self._granted = 0  # turns given and not yet taken or passed on

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _has_room(self) -> bool:
        return self._in_flight() + self._granted < self.limit

    def free(self) -> bool:
        """Whether a newcomer may go on now: room, and nobody waiting for it before."""
        return not self._waiting and self._has_room()

    async def wait_turn(self) -> None:
        """Queue until this caller's turn comes; it then holds a turn, to :meth:`take` or
        :meth:`pass_on`. Cancelled, it leaves the queue (passing on a turn given meanwhile)."""
        await self._waiting.wait()

    def take(self) -> None:
        """The caller's request goes on with its turn (counted in flight from its task)."""
        self._granted -= 1

    def pass_on(self) -> None:
        """The caller holds a turn it will not use (it waits for something else, or goes)."""
        self._granted -= 1
        self.freed()

    def freed(self) -> None:
        """A request ended (or a turn came back): give the room to those waiting longest."""
        while self._waiting and self._has_room():
            self._waiting.give()
            self._granted += 1
