"""The large-read TLS receiver and the synchronous sender (``_tlsread``): many records per read,
post-handshake messages, clean and unclean ends, broken input, sends that skip the scheduler
(and those that must not), and a session running over them.

Real TLS 1.3 with the suite's certificates, over an in-memory byte pipe so that reads see
whatever the peer wrote so far (several records at once when it wrote several).
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from hdsd.transport import WireSession, client_context, server_context
from hdsd.transport import _tlsread as tlsread
from hdsd.transport._tlsread import tls_pieces_receiver, tls_receiver, tls_sender
from hdsd.wire import PROTOCOL_VERSION, Connection, Hello, Reply, Role, StatRequest

from .conftest import Pki

LIMIT = 10
RECORD = 16 * 1024  # the TLS maximum plaintext per record
Pipe = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]


@asynccontextmanager
async def tls_pair(pki: Pki) -> AsyncIterator[tuple[trio.SSLStream[Pipe], trio.SSLStream[Pipe]]]:
    """(server, client), handshaken; the server has sent nothing yet (its session tickets are
    still held back by trio, so they reach the client with its first data)."""
    a, b = trio.testing.memory_stream_pair()
    server = trio.SSLStream(a, server_context(*pki.node_a, pki.ca), server_side=True)
    client = trio.SSLStream(b, client_context(*pki.client, pki.ca), server_hostname="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    try:
        yield server, client
    finally:
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)


@asynccontextmanager
async def tls_socket_pair(pki: Pki) -> AsyncIterator[tuple[trio.SSLStream[trio.SocketStream],
                                                           trio.SSLStream[trio.SocketStream]]]:
    """(server, client) over a real socket pair (what the sender writes to synchronously),
    handshaken; the server has sent nothing yet."""
    a, b = socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)),
                            server_context(*pki.node_a, pki.ca), server_side=True)
    client = trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(b)),
                            client_context(*pki.client, pki.ca), server_hostname="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    try:
        yield server, client
    finally:
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)


async def read_all(receive: object, n: int) -> list[bytes]:
    pieces: list[bytes] = []
    got = 0
    while got < n:
        piece = await receive(256 * 1024)  # type: ignore[operator]
        assert piece, "unexpected end of stream"
        pieces.append(bytes(piece))
        got += len(piece)
    return pieces


async def test_one_read_returns_many_records(pki: Pki) -> None:
    payload = os.urandom(200 * 1024)  # 13 records
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            receive = tls_receiver(client)
            await server.send_all(payload)  # tickets, then all records: buffered in the pipe
            pieces = await read_all(receive, len(payload))
            assert b"".join(pieces) == payload
            # trio's own receive_some would need at least 13 calls.
            assert len(pieces) < len(payload) // RECORD
            assert max(map(len, pieces)) > RECORD


async def test_the_pieces_receiver_hands_many_records_unjoined(pki: Pki) -> None:
    # What WireSession reads with: every record of a read in one call, not joined (and not
    # trio's one-record-per-pass receive_some, which this would also fail on).
    payload = os.urandom(200 * 1024)  # 13 records
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            receive = tls_pieces_receiver(client)
            await server.send_all(payload)
            calls: list[list[bytes]] = []
            while sum(map(len, (p for c in calls for p in c))) < len(payload):
                calls.append(await receive(256 * 1024))
                assert calls[-1], "unexpected end of stream"
            assert b"".join(p for c in calls for p in c) == payload
            assert len(calls) < len(payload) // RECORD
            assert max(map(len, calls)) > 1
            assert all(len(p) <= RECORD for c in calls for p in c)
            await server.aclose()
            assert await receive(256 * 1024) == []  # a clean end: no piece


async def test_records_are_read_without_the_ssl_modules_wrapper(pki: Pki) -> None:
    # One Python call fewer per record received (64 per MiB): the receiver calls the _ssl
    # object's read itself. A Python release that renames it makes this fail (the fallback,
    # the public method, is slower, never wrong).
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (_, client):
            read = tlsread.record_reader(client._ssl_object)
            assert read.__self__ is client._ssl_object._sslobj  # type: ignore[attr-defined]
            assert type(read).__name__ == "builtin_function_or_method"

            class Renamed:  # an SSLObject without the private attribute
                def read(self, n: int) -> bytes:
                    return b""
            renamed = Renamed()
            assert tlsread.record_reader(renamed).__self__ is renamed  # type: ignore[arg-type, attr-defined]


async def test_a_read_with_nothing_to_decrypt_is_not_attempted(pki: Pki) -> None:
    # A record read when no byte waits (before the socket read) or after the last whole one
    # only raises SSLWantReadError (~1.8 µs caught): the receiver looks at the memory BIO and
    # the SSL object's pending plaintext first. Every message must still arrive whole.
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            receive = tls_receiver(client)
            records = receive.__self__  # type: ignore[attr-defined]
            reads: list[str] = []
            inner = records._read

            def counted(n: int) -> bytes:
                try:
                    piece: bytes = inner(n)
                except ssl.SSLWantReadError:
                    reads.append("want-read")
                    raise
                reads.append("record")
                return piece
            records._read = counted
            await server.send_all(b"first")  # with the session tickets: read, then no record
            assert await read_all(receive, 5) == [b"first"]
            reads.clear()
            for n in range(1, 6):
                message = os.urandom(n * 100)
                await server.send_all(message)
                assert b"".join(await read_all(receive, len(message))) == message
            assert reads == ["record"] * 5
            big = os.urandom(3 * RECORD + 7)  # four records in one read
            await server.send_all(big)
            assert b"".join(await read_all(receive, len(big))) == big
            assert "want-read" not in reads
            await server.aclose()
            assert await receive(256 * 1024) == b""  # the close_notify is still read


async def test_interleaved_writes_and_reads_both_ways(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            receive = tls_receiver(client)
            for i in range(20):
                message = os.urandom(1 + i * 3000)
                await server.send_all(message)
                assert b"".join(await read_all(receive, len(message))) == message
                # The client still writes through trio after the reader consumed tickets.
                await client.send_all(message[:100])
                got = b""
                while len(got) < min(100, len(message)):
                    got += await server.receive_some(1000)
                assert got == message[:100]


async def test_bytes_buffered_before_the_takeover_are_returned(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            await server.send_all(b"v" + b"rest of the first write")
            assert await client.receive_some(1) == b"v"  # like connect_tls's verdict byte
            receive = tls_receiver(client)
            assert await receive(1024) == b"rest of the first write"


async def test_clean_close_reads_as_end_of_stream(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            receive = tls_receiver(client)
            await server.send_all(b"last words")
            await server.aclose()  # close_notify
            assert await receive(1024) == b"last words"
            assert await receive(1024) == b""
            assert await receive(1024) == b""


async def test_eof_without_close_notify_is_broken(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            receive = tls_receiver(client)
            await server.send_all(b"partial")
            await server.transport_stream.aclose()  # truncation: no close_notify
            assert await receive(1024) == b"partial"
            with pytest.raises(trio.BrokenResourceError):
                await receive(1024)


async def test_garbage_is_broken_after_the_good_records(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            receive = tls_receiver(client)
            await server.send_all(b"good")
            # A forged application-data record: the AEAD check fails.
            await server.transport_stream.send_all(b"\x17\x03\x03\x00\x20" + bytes(32))
            assert await receive(1024) == b"good"
            with pytest.raises(trio.BrokenResourceError):
                await receive(1024)
            with pytest.raises(trio.BrokenResourceError):
                await receive(1024)


async def test_other_streams_keep_their_own_receive() -> None:
    a, b = trio.testing.memory_stream_pair()
    assert tls_receiver(a) == a.receive_some
    await a.aclose()
    await b.aclose()


async def test_a_session_over_tls_routes_replies(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_pair(pki) as (server, client):
            ours = WireSession(client, Connection(Role.CLIENT))
            theirs = WireSession(server, Connection(Role.SERVER))
            for s, name in ((ours, "c"), (theirs, "s")):
                await s.send(Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1",
                                   peer=name, window=s.conn.initial_window))
            with trio.fail_after(LIMIT):  # the caller owns the deadline
                await ours.receive_hello()
                await theirs.receive_hello()
            big = os.urandom(300 * 1024)  # one reply spanning many records and reads
            async with trio.open_nursery() as nursery:
                def answer(msg: object) -> None:
                    assert isinstance(msg, StatRequest)
                    nursery.start_soon(theirs.send, Reply(rid=msg.rid, body={"b": big}))

                nursery.start_soon(theirs.run_reader, answer)
                nursery.start_soon(ours.run_reader)
                inbox = ours.open_inbox(1)
                await ours.send(StatRequest(rid=1, bucket="b", key="k", version=None))
                assert await inbox.receive() == Reply(rid=1, body={"b": big})
                nursery.cancel_scope.cancel()


async def _passes(send: object, data: bytes) -> int:
    """Tasks that ran while ``await send(data)`` did: 0 if it never passed through the
    scheduler."""
    ran = [0]

    async def other() -> None:
        while True:
            ran[0] += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        while not ran[0]:
            await trio.lowlevel.checkpoint()
        before = ran[0]
        await send(data)  # type: ignore[operator]
        after = ran[0]
        nursery.cancel_scope.cancel()
    return after - before


async def test_a_send_the_socket_takes_whole_skips_the_scheduler(pki: Pki) -> None:
    # What WireSession writes with: a small request or reply costs no scheduler pass (trio's
    # own send_all costs two). Fails if a trio upgrade made tls_sender fall back.
    with trio.fail_after(LIMIT):
        async with tls_socket_pair(pki) as (server, client):
            for stream, other in ((client, server), (server, client)):
                send = tls_sender(stream)
                await send(b"first")  # a server's first write goes through trio (tickets)
                assert await tls_receiver(other)(1024) == b"first"
                receive = tls_receiver(other)
                for size in (1, 4096, 60_000):
                    message = os.urandom(size)
                    assert await _passes(send, message) == 0
                    assert b"".join(await read_all(receive, size)) == message


async def test_bytes_waiting_in_the_socket_are_read_without_a_pass_within_the_budget(
        pki: Pki) -> None:
    # What WireSession reads with: once a read went through trio, what the socket already
    # holds is read without a scheduler pass, up to SYNC_READ_BUDGET bytes; then a pass again.
    # Fails if the synchronous read is not taken, or if it never gives the loop back.
    piece = os.urandom(128 << 10)
    with trio.fail_after(LIMIT):
        async with tls_socket_pair(pki) as (server, client):
            send = tls_sender(server)
            await send(b"first")  # a server's first write goes through trio (tickets)
            receive = tls_pieces_receiver(client)
            assert b"".join(await receive(1024)) == b"first"  # through trio: budget granted
            yields: list[int] = []
            received = bytearray()
            sent = bytearray()
            for _ in range(2 * tlsread.SYNC_READ_BUDGET // len(piece)):
                await send(piece)
                sent += piece
                await trio.sleep(0.005)  # in the client's socket by now
                while len(received) < len(sent):
                    with _TaskSteps() as steps:
                        received += b"".join(await receive(256 << 10))
                    yields.append(steps.count)
            assert received == sent
            # 2 MiB read: the first MiB without a pass (but the read that finds a record
            # cut by the socket's boundary), then a pass, and again.
            assert yields.count(0) >= tlsread.SYNC_READ_BUDGET // len(piece) - 1
            assert any(yields)


class _TaskSteps(trio.abc.Instrument):
    """Counts the times the current task is scheduled again inside the block: 0 when nothing
    in it passed through the scheduler."""

    def __init__(self) -> None:
        self.count = 0
        self._task = trio.lowlevel.current_task()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self._task:
            self.count += 1

    def __enter__(self) -> _TaskSteps:
        trio.lowlevel.add_instrument(self)
        return self

    def __exit__(self, *exc: object) -> None:
        trio.lowlevel.remove_instrument(self)


async def test_a_send_larger_than_the_socket_takes_waits_for_room(pki: Pki) -> None:
    big = os.urandom(8 << 20)  # far more than a socket pair buffers
    with trio.fail_after(LIMIT):
        async with tls_socket_pair(pki) as (server, client):
            send = tls_sender(client)
            receive = tls_receiver(server)
            got: list[bytes] = []

            async def drain() -> None:
                got.extend(await read_all(receive, len(big) + 5))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await send(big)
                await send(b"after")
            assert b"".join(got) == big + b"after"


async def test_sends_and_trio_sends_keep_their_order(pki: Pki) -> None:
    # The first write of a TLS 1.3 server carries the session tickets trio held back; a close
    # is sent by trio too: both mixed with direct sends, the peer reads everything in order.
    with trio.fail_after(LIMIT):
        async with tls_socket_pair(pki) as (server, client):
            send = tls_sender(server)
            receive = tls_receiver(client)
            parts = [os.urandom(n) for n in (10, 5000, 1, 70_000)]
            for part in parts:
                await send(part)
            await server.aclose()
            assert b"".join(await read_all(receive, sum(map(len, parts)))) == b"".join(parts)
            assert await receive(1024) == b""


async def test_a_send_on_a_closed_stream_is_refused(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_socket_pair(pki) as (_server, client):
            send = tls_sender(client)
            await send(b"x")
            await client.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await send(b"y")


async def test_a_send_to_a_vanished_peer_is_broken(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_socket_pair(pki) as (server, client):
            send = tls_sender(client)
            await send(b"x")
            server.transport_stream.socket.close()
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(100):  # the first writes may still land in the socket buffer
                    await send(os.urandom(100_000))


async def test_other_streams_keep_their_own_send() -> None:
    # A stream that is not TLS is written with its own send_all, a frame's pieces one after
    # the other.
    a, b = trio.testing.memory_stream_pair()
    sent: list[bytes] = []
    real = a.send_all

    async def counting(data: bytes | bytearray | memoryview) -> None:
        sent.append(bytes(data))
        await real(data)

    a.send_all = counting  # type: ignore[method-assign]
    send = tls_sender(a)
    await send(b"one")
    await send((b"head", memoryview(b"payload"), bytearray(b"tail")))
    assert sent == [b"one", b"head", b"payload", b"tail"]
    got = b""
    while len(got) < 18:
        got += await b.receive_some()
    assert got == b"oneheadpayloadtail"
    await a.aclose()
    await b.aclose()


async def test_replies_finishing_together_share_a_write(pki: Pki,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The sender is synchronous, so a session's writer yields once before writing while
    # other requests are in flight: 16 replies ready in one pass go out in one or two socket
    # writes, not 16. A lone reply does not wait (see the test above).
    writes: list[int] = []
    real = tlsread._send_now

    def counting(transport: trio.abc.Stream, data: bytes) -> int:
        writes.append(len(data))
        return real(transport, data)

    monkeypatch.setattr(tlsread, "_send_now", counting)
    with trio.fail_after(LIMIT):
        async with tls_socket_pair(pki) as (server, client):
            ours = WireSession(client, Connection(Role.CLIENT))
            theirs = WireSession(server, Connection(Role.SERVER))
            for s, name in ((ours, "c"), (theirs, "s")):
                await s.send(Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1",
                                   peer=name, window=s.conn.initial_window))
            await ours.receive_hello()
            await theirs.receive_hello()
            received: list[object] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(theirs.run_reader, received.append)
                nursery.start_soon(ours.run_reader)
                n = 16
                inboxes = [ours.open_inbox(rid) for rid in range(1, n + 1)]
                await ours.send_many([StatRequest(rid=rid, bucket="b", key="k", version=None)
                                      for rid in range(1, n + 1)])
                while len(received) < n:
                    await trio.sleep(0.001)
                writes.clear()
                async with trio.open_nursery() as replies:
                    for rid in range(1, n + 1):
                        replies.start_soon(theirs.send, Reply(rid=rid, body={"rid": rid}))
                assert 1 <= len(writes) <= 2
                for rid, inbox in enumerate(inboxes, 1):
                    assert await inbox.receive() == Reply(rid=rid, body={"rid": rid})
                nursery.cancel_scope.cancel()


async def test_a_failed_send_marks_the_stream_broken(pki: Pki) -> None:
    # Part of a record may be on the wire: the stream's close must not add a close_notify.
    with trio.fail_after(LIMIT):
        async with tls_socket_pair(pki) as (server, client):
            send = tls_sender(client)
            await send(b"x")
            server.transport_stream.socket.close()
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(100):
                    await send(os.urandom(100_000))
            with pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"y")  # trio's own path agrees: broken
