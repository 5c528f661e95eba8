"""The node-wide request room: waiting connections get it in the order they came."""

from __future__ import annotations

import trio
import trio.testing

from hdsd.node._room import RequestRoom


class _Node:
    """What the room counts: requests in flight, as the node's tasks begin and end them."""

    def __init__(self) -> None:
        self.in_flight = 0

    def room(self, limit: int) -> RequestRoom:
        return RequestRoom(limit, lambda: self.in_flight)


async def _waiter(room: RequestRoom, node: _Node, name: int, order: list[int]) -> None:
    await room.wait_turn()
    room.take()
    node.in_flight += 1  # its request's task begins
    order.append(name)


async def test_waiting_connections_get_the_room_in_arrival_order() -> None:
    node = _Node()
    room = node.room(limit=2)
    node.in_flight = 2
    assert not room.free()
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        for name in range(6):
            nursery.start_soon(_waiter, room, node, name, order)
            await trio.testing.wait_all_tasks_blocked()
        assert room.waiting == 6
        for _ in range(6):  # requests end one at a time; each end admits exactly one
            node.in_flight -= 1
            room.freed()
            await trio.testing.wait_all_tasks_blocked()
    assert order == [0, 1, 2, 3, 4, 5]
    assert node.in_flight == 2 and room.waiting == 0 and room.free() is False


async def test_several_ends_at_once_admit_as_many() -> None:
    node = _Node()
    room = node.room(limit=3)
    node.in_flight = 3
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        for name in range(4):
            nursery.start_soon(_waiter, room, node, name, order)
            await trio.testing.wait_all_tasks_blocked()
        node.in_flight -= 2  # a group of two puts ends: one call
        room.freed()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(order) == [0, 1] and room.waiting == 2  # (woken together: either runs first)
        nursery.cancel_scope.cancel()


async def test_a_newcomer_queues_behind_those_waiting() -> None:
    node = _Node()
    room = node.room(limit=1)
    node.in_flight = 1
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_waiter, room, node, 0, order)
        await trio.testing.wait_all_tasks_blocked()
        node.in_flight = 0  # room, but the waiter has not been given it yet
        assert not room.free()  # a newcomer must not take it ahead of the waiter
        room.freed()
    assert order == [0]


async def test_a_turn_given_as_its_waiter_is_cancelled_passes_to_the_next() -> None:
    node = _Node()
    room = node.room(limit=1)
    node.in_flight = 1
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def cancelled_waiter() -> None:
            with first:
                await _waiter(room, node, 0, order)

        nursery.start_soon(cancelled_waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_waiter, room, node, 1, order)
        await trio.testing.wait_all_tasks_blocked()
        node.in_flight = 0
        first.cancel()  # the first waiter is cancelled (its task not run yet) ...
        room.freed()  # ... as its turn comes: it must hand the turn on as it goes
        await trio.testing.wait_all_tasks_blocked()
    assert order == [1]
    assert room.waiting == 0 and node.in_flight == 1


async def test_a_waiter_cancelled_before_its_turn_leaves_the_queue() -> None:
    node = _Node()
    room = node.room(limit=1)
    node.in_flight = 1
    order: list[int] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await _waiter(room, node, 0, order)
    assert room.waiting == 0 and order == []
    node.in_flight = 0
    assert room.free()


async def test_a_passed_on_turn_goes_to_the_next() -> None:
    node = _Node()
    room = node.room(limit=1)
    node.in_flight = 1
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        async def passes() -> None:
            await room.wait_turn()
            room.pass_on()  # e.g. its connection has too many in flight of its own

        nursery.start_soon(passes)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_waiter, room, node, 1, order)
        await trio.testing.wait_all_tasks_blocked()
        node.in_flight = 0
        room.freed()
    assert order == [1]
