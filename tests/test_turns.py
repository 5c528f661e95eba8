"""hdsd._turns: waiters get their turns in arrival order; a cancelled one leaves no hole."""

from __future__ import annotations

import trio
import trio.testing

from hdsd._turns import TurnQueue


async def test_turns_come_in_arrival_order() -> None:
    queue = TurnQueue(lambda: None)
    served: list[int] = []

    async def waiter(i: int) -> None:
        await queue.wait()
        served.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 5
        for _ in range(5):
            queue.give()
            await trio.testing.wait_all_tasks_blocked()
    assert served == [0, 1, 2, 3, 4]
    assert len(queue) == 0


async def _queue_two(nursery: trio.Nursery, queue: TurnQueue, served: list[str],
                     first: trio.CancelScope, second: trio.CancelScope) -> None:
    """Two waiters queued in order, each under its scope, noting in *served* when served."""

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await queue.wait()
            served.append(name)

    for name, scope in (("first", first), ("second", second)):
        nursery.start_soon(waiter, name, scope)
        await trio.testing.wait_all_tasks_blocked()


async def test_a_waiter_cancelled_before_its_turn_leaves_the_queue() -> None:
    abandoned: list[None] = []
    queue = TurnQueue(lambda: abandoned.append(None))
    served: list[str] = []

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        await _queue_two(nursery, queue, served, first, second)
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 1
        queue.give()
    assert served == ["second"]
    assert abandoned == []  # nobody was given a turn it could not use


async def test_a_turn_given_to_a_cancelled_waiter_is_handed_back() -> None:
    queue = TurnQueue(lambda: queue.give() if len(queue) else None)
    served: list[str] = []

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        await _queue_two(nursery, queue, served, first, second)
        # First is cancelled and, before it runs again, given its turn: it raises Cancelled
        # holding a turn it cannot use, which passes to second.
        first.cancel()
        queue.give()
        await trio.testing.wait_all_tasks_blocked()
        assert served == ["second"]
        nursery.cancel_scope.cancel()  # (so a failure above ends instead of hanging)
