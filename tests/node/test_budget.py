"""The node-wide body budget (hdsd/node/_budget.py): bounded, first come first served, a body
larger than the budget goes on alone, peers are never held back by clients, a put out of
patience goes on over the budget, a cancelled wait leaves nothing behind."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from hdsd.node._budget import (
    CLIENT_PATIENCE_S,
    BodyBudget,
    get_reservation,
    put_reservation,
)

MiB = 1 << 20


async def _take_in(nursery: trio.Nursery, budget: BodyBudget, owner: str | int, n: int,
                   got: list[str | int], *, peer: bool = False, patience: float = math.inf) -> None:
    async def run() -> None:
        await budget.take(owner, n, peer=peer, patience=patience)
        got.append(owner)

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()


async def test_grants_within_capacity_and_waits_beyond_it() -> None:
    budget = BodyBudget(8 * MiB, peer_share=2 * MiB)  # clients: 6 MiB
    got: list[str | int] = []
    async with trio.open_nursery() as nursery:
        for i in range(6):
            await _take_in(nursery, budget, i, MiB, got)
        assert got == list(range(6)) and budget.client_bytes == 6 * MiB
        await _take_in(nursery, budget, 6, MiB, got)
        assert got == list(range(6)) and budget.describe()["waiting"] == 1
        budget.release(0)
        await trio.testing.wait_all_tasks_blocked()
        assert got[-1] == 6 and budget.client_bytes == 6 * MiB
    assert budget.peak == 6 * MiB and budget.waited == 1 and budget.over == 0
    for i in range(1, 7):
        budget.release(i)
    assert budget.in_use == 0
    budget.release("unknown")  # an owner that holds nothing: nothing happens
    assert budget.in_use == 0


async def test_first_come_first_served_a_big_body_is_not_starved() -> None:
    budget = BodyBudget(4 * MiB, peer_share=0)
    got: list[str | int] = []
    async with trio.open_nursery() as nursery:
        await _take_in(nursery, budget, "a", 3 * MiB, got)
        await _take_in(nursery, budget, "big", 2 * MiB, got)  # does not fit: waits
        await _take_in(nursery, budget, "small", 4096, got)  # fits, but comes after "big"
        assert got == ["a"]
        budget.release("a")
        await trio.testing.wait_all_tasks_blocked()
        assert set(got[1:]) == {"big", "small"}  # both granted together, in line order
    assert budget.in_use == 2 * MiB + 4096


async def test_a_body_larger_than_the_budget_goes_on_alone() -> None:
    budget = BodyBudget(4 * MiB, peer_share=MiB)
    got: list[str | int] = []
    async with trio.open_nursery() as nursery:
        await _take_in(nursery, budget, "huge", 16 * MiB, got)  # nothing held: on at once
        await _take_in(nursery, budget, "next", 4096, got)
        assert got == ["huge"] and budget.peak == 16 * MiB
        budget.release("huge")
        await trio.testing.wait_all_tasks_blocked()
        await _take_in(nursery, budget, "held", MiB, got)
        await _take_in(nursery, budget, "huge2", 16 * MiB, got)  # waits for "held" ...
        assert got == ["huge", "next", "held"]
        budget.release("next")
        budget.release("held")
        await trio.testing.wait_all_tasks_blocked()  # ... then goes on alone
        assert got[-1] == "huge2" and budget.client_bytes == 16 * MiB


async def test_peers_are_not_held_back_by_clients() -> None:
    """Clients at their cap, with more waiting: a replica's write still goes on (two sites full
    of puts each waiting for the other's replica must not be stuck), within the whole
    capacity, and one peer body larger than the peers' room goes on alone."""
    budget = BodyBudget(8 * MiB, peer_share=2 * MiB)
    got: list[str | int] = []
    async with trio.open_nursery() as nursery:
        await _take_in(nursery, budget, "clients", 6 * MiB, got)
        await _take_in(nursery, budget, "client-waiting", MiB, got)
        await _take_in(nursery, budget, "p1", MiB, got, peer=True)
        await _take_in(nursery, budget, "p2", MiB, got, peer=True)
        assert got == ["clients", "p1", "p2"] and budget.in_use == 8 * MiB
        await _take_in(nursery, budget, "p3", MiB, got, peer=True)  # the budget is spent
        assert got == ["clients", "p1", "p2"]
        budget.release("p1")
        await trio.testing.wait_all_tasks_blocked()
        # The freed MiB goes to the peer in line, not to the client (clients are at their cap).
        assert got[-1] == "p3" and budget.peer_bytes == 2 * MiB
        budget.release("p2")
        budget.release("p3")
        await trio.testing.wait_all_tasks_blocked()
        await _take_in(nursery, budget, "p-big", 5 * MiB, got, peer=True)  # alone among peers
        assert "p-big" in got
        budget.release("clients")
        budget.release("p-big")
    assert budget.in_use == MiB  # client-waiting got its MiB in the end


async def test_out_of_patience_goes_on_over_the_budget_and_cancel_leaves_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    budget = BodyBudget(2 * MiB, peer_share=0)
    await budget.take("full", 2 * MiB)
    with trio.fail_after(10):
        await budget.take("patient", MiB, patience=1.0)  # never refused: over, counted
    assert budget.over == 1 and budget.client_bytes == 3 * MiB and budget.peak == 3 * MiB
    with trio.move_on_after(5) as scope:
        await budget.take("gives-up", MiB)  # cancelled by its caller while in line
    assert scope.cancelled_caught and budget.describe()["waiting"] == 0
    assert budget.held_by("gives-up") == 0 and budget.client_bytes == 3 * MiB


def test_reservations() -> None:
    window = 8 * MiB
    assert put_reservation(4096, window) == 4096
    assert put_reservation(MiB, window) == MiB
    assert put_reservation(1 << 30, window) == window  # credit bounds what a stream sends
    assert put_reservation(None, window) == window
    assert get_reservation(4096, MiB) == 4096
    assert get_reservation(1 << 30, MiB) == 4 * MiB


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_client_waits_at_most_its_patience_a_peer_for_room(
        autojump_clock: trio.testing.MockClock) -> None:
    """Room held by a stalled client (a trickled upload, a download never read) must delay the
    others, never stop them: a client's default patience is CLIENT_PATIENCE_S. A peer's write
    waits for room (peers' writes end on their own)."""
    budget = BodyBudget(8 * MiB, peer_share=2 * MiB)
    await budget.take("stalled", 6 * MiB)  # every byte of the clients' share, held for good
    await budget.take("peer-held", 2 * MiB, peer=True)
    started = trio.current_time()
    await budget.take("next", MiB)  # default patience
    assert trio.current_time() - started == pytest.approx(CLIENT_PATIENCE_S)
    assert budget.over == 1 and budget.held_by("next") == MiB
    with trio.move_on_after(10 * CLIENT_PATIENCE_S) as scope:
        await budget.take("peer-next", MiB, peer=True)
    assert scope.cancelled_caught and budget.held_by("peer-next") == 0
