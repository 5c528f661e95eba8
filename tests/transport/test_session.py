"""WireSession's sending side: one write per batch, coalescing across tasks, a bounded outbox,
and what a failed or cancelled write does to everyone waiting on the connection.

Two sessions talk over an in-memory stream pair; the client's end goes through :class:`Tap`,
which records every ``send_all`` and can hold writes at a gate or make them fail.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.testing

from hdsd import ConnectionLost
from hdsd.transport import WireSession
from hdsd.transport._session import MAX_DATA_FRAME, WRITE_GRACE
from hdsd.transport._tlsread import SEND_LOWAT, Sendable
from hdsd.wire import (
    DEFAULT_WINDOW,
    PROTOCOL_VERSION,
    Connection,
    Data,
    End,
    Hello,
    LocalProtocolError,
    Message,
    PutStart,
    Reply,
    Role,
    StatRequest,
)

LIMIT = 10  # seconds; every test is in-memory and finishes in milliseconds


class Tap(trio.abc.Stream):
    """A stream that records writes, and can hold them (``gate``) or fail them (``fail``)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []
        self.gate: trio.Event | None = None
        self.fail: BaseException | None = None
        self.closed = False
        # Set: aclose waits forever before closing, unless cancelled (trio's contract: a
        # cancelled aclose still closes), as a graceful close the other end never answers.
        self.slow_close = False
        self.close_error: BaseException | None = None  # raised by aclose, once closed

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        try:
            if self.slow_close:
                await trio.sleep_forever()
        finally:
            self.closed = True
            await trio.aclose_forcefully(self.inner)
        if self.close_error is not None:
            raise self.close_error


@dataclass
class Pair:
    client: WireSession
    server: WireSession
    tap: Tap  # the client's end
    server_tap: Tap
    requests: list[Message] = field(default_factory=list)
    inboxes: dict[int, trio.MemoryReceiveChannel[Message]] = field(default_factory=dict)


def hello(session: WireSession, name: str) -> Hello:
    return Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1", peer=name,
                 window=session.conn.initial_window)


@asynccontextmanager
async def open_pair() -> AsyncIterator[Pair]:
    a, b = trio.testing.memory_stream_pair()
    tap, server_tap = Tap(a), Tap(b)
    pair = Pair(WireSession(tap, Connection(Role.CLIENT)),
                WireSession(server_tap, Connection(Role.SERVER)), tap, server_tap)
    await pair.client.send(hello(pair.client, "client"))
    await pair.server.send(hello(pair.server, "server"))
    with trio.fail_after(LIMIT):  # the caller owns the deadline
        await pair.client.receive_hello()
        await pair.server.receive_hello()

    def on_request(msg: Message) -> None:
        pair.requests.append(msg)
        rid: int = msg.rid  # type: ignore[attr-defined]
        pair.inboxes[rid] = pair.server.open_inbox(rid)

    async def read(session: WireSession, *args: object) -> None:
        # As every owner of a session does: the reader's end (a write that failed closes
        # the stream under it) reaches the requests as ConnectionLost, not the nursery.
        with contextlib.suppress(ConnectionLost):
            await session.run_reader(*args)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, pair.server, on_request)
        nursery.start_soon(read, pair.client)
        try:
            yield pair
        finally:
            nursery.cancel_scope.cancel()


def put_start(rid: int, size: int | None = None) -> PutStart:
    return PutStart(rid=rid, request_id=bytes(16), bucket="b", key="k", size=size, metadata={},
                    policy=None)


async def test_send_many_is_one_write_and_arrives_in_order() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            before = len(pair.tap.writes)
            await pair.client.send_many([put_start(1, 3), Data(rid=1, data=b"abc"), End(rid=1)])
            assert len(pair.tap.writes) == before + 1
            await trio.testing.wait_all_tasks_blocked()
            assert pair.requests == [put_start(1, 3)]
            inbox = pair.inboxes[1]
            assert await inbox.receive() == Data(rid=1, data=b"abc")
            assert await inbox.receive() == End(rid=1)


async def test_concurrent_replies_share_writes() -> None:
    n = 16
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            replies = [pair.client.open_inbox(rid) for rid in range(n)]
            await pair.client.send_many([StatRequest(rid=rid, bucket="b", key=f"k{rid}",
                                                     version=None) for rid in range(n)])
            await trio.testing.wait_all_tasks_blocked()
            assert len(pair.requests) == n
            before = len(pair.server_tap.writes)
            async with trio.open_nursery() as nursery:
                for rid in range(n):
                    nursery.start_soon(pair.server.send, Reply(rid=rid, body={"rid": rid}))
            # The first reply goes out alone; the 15 queued while it was written go in one.
            assert len(pair.server_tap.writes) - before <= 2
            for rid, inbox in enumerate(replies):
                assert await inbox.receive() == Reply(rid=rid, body={"rid": rid})


async def test_outbox_is_bounded() -> None:
    piece = 600 * 1024  # two pieces fit under the limit, a third one waits
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            await pair.client.send(put_start(1))
            window = pair.client.conn.send_credit_available(1)
            gate = pair.tap.gate = trio.Event()
            done: list[int] = []

            async def send(i: int) -> None:
                await pair.client.send(Data(rid=1, data=bytes([i]) * piece))
                done.append(i)

            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(send, i)
                    await trio.testing.wait_all_tasks_blocked()
                # 0 is being written (held at the gate), 1 and 2 are queued: the outbox is
                # over its limit, so 3 waits *before* encoding (its credit is not spent yet).
                assert pair.client.conn.send_credit_available(1) == window - 3 * piece
                assert done == []
                gate.set()
            assert sorted(done) == [0, 1, 2, 3]
            await trio.testing.wait_all_tasks_blocked()
            inbox = pair.inboxes[1]
            got = [(await inbox.receive()) for _ in range(4)]
            assert [m.data[0] for m in got if isinstance(m, Data)] == [0, 1, 2, 3]


async def test_senders_waiting_for_room_go_in_arrival_order() -> None:
    # A burst of large frames on one connection (a peer link's replication writes): each
    # waits its turn. Woken all at once at each drain, as before, the first few the scheduler
    # ran took the room (trio runs a batch of woken tasks in either order): some senders
    # waited drain after drain, past the write timeout, while the link moved data.
    piece = 600 * 1024
    n = 10
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            await pair.client.send(put_start(1))
            gate = pair.tap.gate = trio.Event()
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(pair.client.send, Data(rid=1, data=bytes([i]) * piece))
                    await trio.testing.wait_all_tasks_blocked()
                gate.set()
            await trio.testing.wait_all_tasks_blocked()
            inbox = pair.inboxes[1]
            got = [(await inbox.receive()) for _ in range(n)]
            assert [m.data[0] for m in got if isinstance(m, Data)] == list(range(n))


async def test_a_sender_cancelled_as_its_turn_comes_passes_it_on() -> None:
    piece = 600 * 1024
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            await pair.client.send(put_start(1))
            gate = pair.tap.gate = trio.Event()
            cancelled = trio.CancelScope()
            admit = pair.client._admit

            def cancel_then_admit() -> None:
                cancelled.cancel()  # sender 3 is cancelled as it waits ...
                admit()  # ... and its turn comes before it ran

            async def doomed() -> None:
                with cancelled:
                    await pair.client.send(Data(rid=1, data=bytes([3]) * piece))

            async with trio.open_nursery() as nursery:
                for i in range(3):  # 0 is written (held at the gate), 1 and 2 fill the outbox
                    nursery.start_soon(pair.client.send, Data(rid=1, data=bytes([i]) * piece))
                    await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(doomed)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(pair.client.send, Data(rid=1, data=bytes([4]) * piece))
                await trio.testing.wait_all_tasks_blocked()
                pair.client._admit = cancel_then_admit  # type: ignore[method-assign]
                gate.set()
                await trio.testing.wait_all_tasks_blocked()
                pair.client._admit = admit  # type: ignore[method-assign]
            # Sender 4 was not left waiting for a turn that went nowhere.
            inbox = pair.inboxes[1]
            got = [(await inbox.receive()) for _ in range(4)]
            assert [m.data[0] for m in got if isinstance(m, Data)] == [0, 1, 2, 4]
            assert cancelled.cancelled_caught


async def test_failed_write_wakes_every_waiter() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            waiting_reply = pair.client.open_inbox(7)
            await pair.client.send(StatRequest(rid=7, bucket="b", key="k", version=None))
            gate = pair.tap.gate = trio.Event()
            errors: list[BaseException] = []

            async def send(rid: int) -> None:
                try:
                    await pair.client.send(StatRequest(rid=rid, bucket="b", key="k",
                                                       version=None))
                except ConnectionLost as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, 1)  # the writer, held at the gate
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(send, 2)  # queued behind it
                await trio.testing.wait_all_tasks_blocked()
                pair.tap.fail = trio.BrokenResourceError("reset by peer")
                gate.set()
            assert len(errors) == 2
            with pytest.raises(trio.EndOfChannel):
                await waiting_reply.receive()  # the request waiting for a reply learns too
            with pytest.raises(ConnectionLost):
                await pair.client.send(StatRequest(rid=3, bucket="b", key="k", version=None))


async def test_write_cancelled_midway_closes_the_session() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            pair.tap.gate = trio.Event()
            errors: list[BaseException] = []
            scope = trio.CancelScope()

            async def writer() -> None:
                with scope:
                    await pair.client.send(StatRequest(rid=1, bucket="b", key="k", version=None))

            async def queued() -> None:
                try:
                    await pair.client.send(StatRequest(rid=2, bucket="b", key="k", version=None))
                except ConnectionLost as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)  # held at the gate, inside send_all
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(queued)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
            assert scope.cancelled_caught
            assert len(errors) == 1  # its frame may never go out: it is told so
            with pytest.raises(ConnectionLost):
                await pair.client.send(StatRequest(rid=3, bucket="b", key="k", version=None))
            # The stream is closed with the session, so the other end sees the connection
            # end instead of waiting for the rest of a frame until its idle timeout.
            assert pair.tap.closed
            await trio.testing.wait_all_tasks_blocked()
            assert pair.server.closed


async def test_failed_write_closes_the_stream() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            pair.tap.fail = trio.BrokenResourceError("reset by peer")
            with pytest.raises(ConnectionLost):
                await pair.client.send(StatRequest(rid=1, bucket="b", key="k", version=None))
            assert pair.client.closed and pair.tap.closed
            assert "reset by peer" in str(pair.client.closed_reason)
            await trio.testing.wait_all_tasks_blocked()
            # The reader met the closed stream after the write failed: the reason kept is the
            # write's, the cause.
            assert "reset by peer" in str(pair.client.closed_reason)
            assert pair.server.closed


async def test_aclose_of_a_stream_closed_meanwhile_raises_nothing() -> None:
    # A cut write closes the stream (forcefully) under the reader, whose owner then closes
    # the session gracefully: trio's TLS stream, closed halfway by the first, raises
    # ClosedResourceError at the second's close_notify. The session is closed all the same.
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            pair.tap.close_error = trio.ClosedResourceError("this socket was already closed")
            await pair.client.aclose()
            assert pair.client.closed and pair.tap.closed


async def test_a_cut_write_closes_the_stream_without_waiting_for_a_graceful_close(
        autojump_clock: trio.testing.MockClock) -> None:
    # A stream whose graceful close would wait for the other end (a TLS close_notify into a
    # full socket): the cut write's close must not wait for it, cancelled or not — not even
    # for a bounded while (no time passes on the test's clock).
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            start = trio.current_time()
            pair.tap.slow_close = True
            pair.tap.gate = trio.Event()
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pair.client.send,
                                       StatRequest(rid=1, bucket="b", key="k", version=None))
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            assert scope.cancelled_caught
            assert pair.tap.closed and trio.current_time() == start
            await trio.testing.wait_all_tasks_blocked()
            assert pair.server.closed


async def test_send_in_a_cancelled_scope_changes_nothing() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            before = len(pair.tap.writes)
            with trio.CancelScope() as scope:
                scope.cancel()
                await pair.client.send(put_start(5))
            assert scope.cancelled_caught
            assert not pair.client.conn.in_flight(5)
            assert len(pair.tap.writes) == before
            await pair.client.send(put_start(5))  # the connection is still fine
            assert pair.client.conn.in_flight(5)


async def test_a_refused_message_still_sends_those_before_it() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            with pytest.raises(LocalProtocolError):
                # rid 2 has no upload open: its Data is refused after PutStart(1) was encoded.
                await pair.client.send_many([put_start(1), Data(rid=2, data=b"x")])
            await trio.testing.wait_all_tasks_blocked()
            assert pair.requests == [put_start(1)]


async def test_send_upload_is_send_many_of_its_frames_in_one_write() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as ours, open_pair() as theirs:
            for pair in (ours, theirs):
                await pair.client.send_many([StatRequest(rid=9, bucket="b", key="k",
                                                         version=None)])
            before = len(ours.tap.writes)
            await ours.client.send_upload(put_start(1, 3), b"abc")
            await ours.client.send_upload(put_start(2, 0), b"")
            await theirs.client.send_many([put_start(1, 3), Data(rid=1, data=b"abc"),
                                           End(rid=1)])
            await theirs.client.send_many([put_start(2, 0), End(rid=2)])
            assert len(ours.tap.writes) == before + 2
            assert ours.tap.writes == theirs.tap.writes
            await trio.testing.wait_all_tasks_blocked()
            assert ours.requests == theirs.requests
            assert ours.requests[-2:] == [put_start(1, 3), put_start(2, 0)]


async def test_a_refused_upload_sends_nothing() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            await pair.client.send_upload(put_start(1, 3), b"abc")
            writes = len(pair.tap.writes)
            with pytest.raises(LocalProtocolError, match="already in flight"):
                await pair.client.send_upload(put_start(1, 3), b"abc")
            with pytest.raises(LocalProtocolError, match="frame limit"):  # and over the credit
                await pair.client.send_upload(put_start(2), bytes(DEFAULT_WINDOW + 1))
            assert len(pair.tap.writes) == writes
            assert not pair.client.conn.in_flight(2)


async def test_held_body_bytes_are_counted_until_consumed_or_closed() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            await pair.client.send_many([put_start(1), Data(rid=1, data=b"a" * 1000),
                                         put_start(2), Data(rid=2, data=b"b" * 500)])
            await trio.testing.wait_all_tasks_blocked()
            assert pair.server.held == 1500
            await pair.server.consumed(1, 400)
            assert pair.server.held == 1100
            pair.server.close_inbox(2)  # a request that ended: its queued bytes are let go
            assert pair.server.held == 600
            await pair.server.consumed(1, 10_000)  # never below zero
            assert pair.server.held == 0


async def test_before_open_gate_holds_new_requests_and_can_drop_them() -> None:
    a, b = trio.testing.memory_stream_pair()
    client = WireSession(a, Connection(Role.CLIENT))
    server = WireSession(b, Connection(Role.SERVER))
    seen: list[int] = []
    room = trio.Event()

    async def before_open(msg: Message) -> bool:
        rid: int = msg.rid  # type: ignore[attr-defined]
        if rid == 2:
            await room.wait()  # nothing after it is read meanwhile
        return rid != 3  # the node answers and drops such a request itself

    with trio.fail_after(LIMIT):
        await client.send(hello(client, "client"))
        await server.send(hello(server, "server"))
        await client.receive_hello()
        await server.receive_hello()
        async with trio.open_nursery() as nursery:
            def on_request(msg: Message) -> None:
                seen.append(msg.rid)  # type: ignore[attr-defined]

            nursery.start_soon(partial(server.run_reader, on_request, before_open=before_open))
            await client.send_many([StatRequest(rid=r, bucket="b", key="k", version=None)
                                    for r in (1, 2, 3, 4)])
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [1]
            room.set()
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [1, 2, 4]
            nursery.cancel_scope.cancel()


async def test_peer_address_is_asked_of_the_socket_once() -> None:
    # Every audited request names its client: one getpeername per connection, not per request.
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, lambda s: trio.sleep_forever(), 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            tls = trio.SSLStream(stream, ssl.create_default_context())  # never handshaken
            session = WireSession(tls, Connection(Role.CLIENT))
            address = f"127.0.0.1:{port}"
            assert session.peer_address() == address
            calls = []
            real = stream.socket.getpeername
            stream.socket.getpeername = lambda: calls.append(1) or real()  # type: ignore
            assert session.peer_address() == address and not calls
        nursery.cancel_scope.cancel()
    memory = WireSession(trio.testing.memory_stream_pair()[0], Connection(Role.CLIENT))
    assert memory.peer_address() == "?"  # no socket to ask


async def test_a_session_lets_its_tcp_socket_hold_a_data_frame_unsent() -> None:
    # trio holds a TCP stream's unsent bytes to 16 KiB (TCP_NOTSENT_LOWAT): a streamed get's
    # node then woke ~7 times per MiB to write the next few records as the client read. A
    # session over TCP (TLS or not) lets its socket hold SEND_LOWAT: a whole 1 MiB Data frame
    # goes to the kernel in one write, even while the other end reads nothing yet.
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, lambda s: trio.sleep_forever(), 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        for tls in (False, True):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 16384
                WireSession(trio.SSLStream(stream, ssl.create_default_context()) if tls
                            else stream, Connection(Role.CLIENT))
                assert stream.getsockopt(socket.IPPROTO_TCP,
                                         socket.TCP_NOTSENT_LOWAT) == SEND_LOWAT
                frame = bytes(MAX_DATA_FRAME)
                assert os.write(stream.socket.fileno(), frame) == len(frame)
        nursery.cancel_scope.cancel()


async def test_an_upload_read_whole_with_its_start_needs_no_inbox() -> None:
    # A small put arrives in one write: the session keeps its body aside for the handler
    # (no channel); an upload whose body is still coming, or interleaved with another
    # request, gets its inbox with the frames read so far, in order.
    a, b = trio.testing.memory_stream_pair()
    client = WireSession(a, Connection(Role.CLIENT))
    server = WireSession(b, Connection(Role.SERVER))
    whole: dict[int, list[Message] | None] = {}
    inboxes: dict[int, trio.MemoryReceiveChannel[Message]] = {}

    async def before_open(msg: Message) -> bool:
        return True

    def on_request(msg: Message) -> None:
        rid: int = msg.rid  # type: ignore[attr-defined]
        if server.has_whole_upload(rid):
            whole[rid] = server.take_whole_upload(rid)
        else:
            inboxes[rid] = server.open_inbox(rid)

    with trio.fail_after(LIMIT):
        await client.send(hello(client, "client"))
        await server.send(hello(server, "server"))
        await client.receive_hello()
        await server.receive_hello()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(server.run_reader, on_request, before_open=before_open))
            await client.send_many([put_start(1, 3), Data(rid=1, data=b"abc"), End(rid=1)])
            await trio.testing.wait_all_tasks_blocked()
            assert whole == {1: [Data(rid=1, data=b"abc"), End(rid=1)]}
            assert server.held == 3 and 1 not in inboxes
            server.close_inbox(1)  # the request ended: its bytes are let go
            assert server.held == 0
            # Two uploads interleaved, the second one's body not ended yet.
            await client.send_many([put_start(2, 4), Data(rid=2, data=b"ab"), put_start(3, 2),
                                    Data(rid=2, data=b"cd"), End(rid=2), Data(rid=3, data=b"x")])
            await trio.testing.wait_all_tasks_blocked()
            assert set(inboxes) == {2, 3} and set(whole) == {1}
            got = [inboxes[2].receive_nowait() for _ in range(3)]
            assert got == [Data(rid=2, data=b"ab"), Data(rid=2, data=b"cd"), End(rid=2)]
            assert inboxes[3].receive_nowait() == Data(rid=3, data=b"x")
            assert server.held == 5
            nursery.cancel_scope.cancel()


async def test_a_job_handed_to_the_reader_runs_before_it_reads_on() -> None:
    # on_request may hand the reader a job (run_next): the reader awaits it as soon as the
    # request is routed, and routes nothing more until it returns; then reads on as before.
    a, b = trio.testing.memory_stream_pair()
    client = WireSession(a, Connection(Role.CLIENT))
    server = WireSession(b, Connection(Role.SERVER))
    seen: list[int] = []
    done: list[int] = []
    go = trio.Event()

    async def before_open(msg: Message) -> bool:
        return True

    def on_request(msg: Message) -> None:
        rid: int = msg.rid  # type: ignore[attr-defined]
        seen.append(rid)
        if rid == 1:
            async def job() -> None:
                await go.wait()
                done.append(rid)

            server.run_next(job)

    with trio.fail_after(LIMIT):
        await client.send(hello(client, "client"))
        await server.send(hello(server, "server"))
        await client.receive_hello()
        await server.receive_hello()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(server.run_reader, on_request, before_open=before_open))
            await client.send_many([put_start(1, 3), Data(rid=1, data=b"abc"), End(rid=1)])
            await trio.testing.wait_all_tasks_blocked()
            await client.send_many([StatRequest(rid=2, bucket="b", key="k", version=None)])
            await trio.testing.wait_all_tasks_blocked()
            assert (seen, done) == ([1], [])  # rid 2 is read only once the job is done
            go.set()
            await trio.testing.wait_all_tasks_blocked()
            assert (seen, done) == ([1, 2], [1])
            nursery.cancel_scope.cancel()


def _stat(rid: int) -> StatRequest:
    return StatRequest(rid=rid, bucket="b", key="k", version=None)


async def test_a_writer_cancelled_mid_frame_finishes_it_and_hands_over_the_rest() -> None:
    # finish_frames, other requests in flight: the cancelled writer finishes its frame, then
    # leaves the frame queued behind it to its sender, who writes it; nothing is cut.
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            pair.client.finish_frames = True
            await pair.client.send(_stat(1))  # in flight: the connection is shared
            writers: list[str] = []
            real_send_all = pair.client._send_all

            async def send_all(data: Sendable) -> None:
                writers.append(trio.lowlevel.current_task().name)
                await real_send_all(data)

            pair.client._send_all = send_all
            gate = pair.tap.gate = trio.Event()
            scope = trio.CancelScope()

            async def cancelled() -> None:
                with scope:
                    await pair.client.send(_stat(2))

            async def other() -> None:
                await pair.client.send(_stat(3))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancelled, name="cancelled")
                await trio.testing.wait_all_tasks_blocked()  # its write held at the gate
                nursery.start_soon(other, name="other")
                await trio.testing.wait_all_tasks_blocked()  # queued behind it
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert not pair.client.closed  # still writing its frame
                gate.set()
            assert scope.cancelled_caught and not pair.client.closed
            assert writers == ["cancelled", "other"]
            await trio.testing.wait_all_tasks_blocked()
            assert [m.rid for m in pair.requests] == [1, 2, 3]  # type: ignore[attr-defined]


async def test_a_started_frame_that_cannot_be_written_is_cut_after_its_bound(
        autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10 * WRITE_GRACE):
        async with open_pair() as pair:
            pair.client.finish_frames = True
            await pair.client.send(_stat(1))
            pair.tap.gate = trio.Event()  # never set: the other end does not read
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pair.client.send, _stat(2))
                    await trio.testing.wait_all_tasks_blocked()
                    began = trio.current_time()
                    scope.cancel()
            assert scope.cancelled_caught  # the caller still gets its Cancelled
            assert pair.client.closed and pair.tap.closed
            assert trio.current_time() - began >= WRITE_GRACE
            assert "did not finish within" in str(pair.client.closed_reason)


async def test_a_lone_request_cancelled_mid_frame_still_cuts_at_once() -> None:
    with trio.fail_after(LIMIT):
        async with open_pair() as pair:
            pair.client.finish_frames = True
            pair.tap.gate = trio.Event()
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pair.client.send, _stat(1))
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            assert scope.cancelled_caught and pair.client.closed
