"""The one-message inbox of a request answered by one message (``WireSession.open_call``, the
peer links' calls): it hands over what came, parks its one waiter until then, ends with
``EndOfChannel`` once closed — by the request's end or the session's — and lets a cancelled
waiter go."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from hdsd import ConnectionLost
from hdsd.transport import WireSession
from hdsd.transport._session import ReplySlot
from hdsd.wire import (
    PROTOCOL_VERSION,
    UNSENT,
    Connection,
    End,
    FetchChunk,
    Hello,
    Message,
    Reply,
    Role,
)

LIMIT = 10


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[WireSession, WireSession, list[Message]]]:
    """Two sessions over an in-memory stream, both readers running; the server's requests
    are appended to the list."""
    a, b = trio.testing.memory_stream_pair()
    client = WireSession(a, Connection(Role.CLIENT))
    server = WireSession(b, Connection(Role.SERVER))
    for session, name in ((client, "client"), (server, "server")):
        await session.send(Hello(PROTOCOL_VERSION, "c1", name, session.conn.initial_window))
    await client.receive_hello()
    await server.receive_hello()
    requests: list[Message] = []

    async def read(session: WireSession, on_request: Callable[[Message], None] | None) -> None:
        try:
            await session.run_reader(on_request)
        except ConnectionLost:
            pass  # a test closed it

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, server, requests.append)
        nursery.start_soon(read, client, None)
        try:
            yield client, server, requests
        finally:
            nursery.cancel_scope.cancel()


def _request() -> FetchChunk:
    return FetchChunk(UNSENT, "l", "t", bytes(32))


async def test_a_call_gets_its_answer_in_its_slot() -> None:
    with trio.fail_after(LIMIT):
        async with _pair() as (client, server, requests):
            first, slot = client.open_call(_request())
            second, other = client.open_call(_request())
            assert first.rid != second.rid and client.open_inboxes == 2
            await client.send_many([first, second])
            await trio.testing.wait_all_tasks_blocked()
            assert requests == [first, second]
            await server.send(Reply(second.rid, {"payload": b"2"}))
            assert await other.receive() == Reply(second.rid, {"payload": b"2"})
            client.close_inbox(second.rid)
            await server.send(Reply(first.rid, {"payload": b"1"}))
            assert await slot.receive() == Reply(first.rid, {"payload": b"1"})
            client.close_inbox(first.rid)
            assert client.open_inboxes == 0


async def test_a_call_waiting_when_the_session_ends_hears_of_it() -> None:
    with trio.fail_after(LIMIT):
        async with _pair() as (client, server, _):
            request, slot = client.open_call(_request())
            await client.send(request)
            await server.aclose()
            with pytest.raises(trio.EndOfChannel):
                await slot.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert client.closed
            with pytest.raises(ConnectionLost):
                client.open_call(_request())


async def test_a_slot_hands_over_what_came_then_ends() -> None:
    slot = ReplySlot()
    got: list[Message] = []

    async def wait() -> None:
        got.append(await slot.receive())

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert not got  # parked until the answer comes
            slot.send_nowait(End(1))
    assert got == [End(1)]
    slot.send_nowait(End(2))  # already there: taken at once
    slot.close()
    assert await slot.receive() == End(2)  # what came before the close is still handed over
    with pytest.raises(trio.EndOfChannel):
        await slot.receive()
    with pytest.raises(trio.BrokenResourceError):
        slot.send_nowait(End(3))


async def test_a_slot_wakes_its_waiter_when_closed_and_lets_a_cancelled_one_go() -> None:
    slot = ReplySlot()
    ended: list[str] = []

    async def wait() -> None:
        try:
            await slot.receive()
        except trio.EndOfChannel:
            ended.append("closed")

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            slot.close()
    assert ended == ["closed"]

    other = ReplySlot()
    with trio.move_on_after(0.01) as scope:
        await other.receive()
    assert scope.cancelled_caught
    other.send_nowait(End(1))  # the cancelled waiter is gone: nobody to wake, kept
    assert await other.receive() == End(1)


def test_a_slot_is_read_without_waiting_as_a_memory_channel() -> None:
    # What a get's reader takes without a checkpoint (``client._results.queued``): what
    # came, in order; WouldBlock while nothing did; EndOfChannel once closed and empty.
    slot = ReplySlot()
    with pytest.raises(trio.WouldBlock):
        slot.receive_nowait()
    slot.send_nowait(End(1))
    slot.send_nowait(End(2))
    slot.close()
    assert [slot.receive_nowait(), slot.receive_nowait()] == [End(1), End(2)]
    with pytest.raises(trio.EndOfChannel):
        slot.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        slot.send_nowait(End(3))
